"""Pixel flags (flags.pixel.*, measurement-spec.md §3) from the mask plane and the ungrown footprints."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from processccd.image import mask_bit
from processccd.meas.psf_flux import stamp_indices


@dataclass(frozen=True)
class MaskBits:
    """Mask-plane bit values (afw 2013 default plane order)."""

    bad: int = mask_bit("BAD")
    saturated: int = mask_bit("SAT")
    interpolated: int = mask_bit("INTRP")
    cosmic_ray: int = mask_bit("CR")
    edge: int = mask_bit("EDGE")
    detected: int = mask_bit("DETECTED")
    detected_negative: int = mask_bit("DETECTED_NEGATIVE")


DEFAULT_BITS = MaskBits()
FLAG_NAMES = ("edge", "interpolated_any", "interpolated_center", "saturated_any", "saturated_center")


def pixel_flags_many(
    mask: np.ndarray,
    source_index: np.ndarray,
    footprint_ys: np.ndarray,
    footprint_xs: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    bits: MaskBits = DEFAULT_BITS,
) -> dict[str, np.ndarray]:
    """Pixel flags of N sources; the footprints are given as concatenated pixel lists.

    Pixel j belongs to source `source_index[j]` (0..N−1) and lies at (footprint_xs[j], footprint_ys[j]);
    sources are centred at (xs, ys). "any" = the bit on any footprint pixel; "center" = the bit in the
    3×3 box centred on (round(x), round(y)) (pixels outside the image ignored); edge = the centre outside
    the image or EDGE on any footprint pixel. Returns {name: bool array (N,)} for the names in FLAG_NAMES.
    """
    xs = np.atleast_1d(np.asarray(xs, dtype=np.float64))
    ys = np.atleast_1d(np.asarray(ys, dtype=np.float64))
    n_sources = len(xs)
    source_index = np.asarray(source_index, dtype=np.int64)
    footprint_bits = mask[np.asarray(footprint_ys), np.asarray(footprint_xs)].astype(np.int64)

    def on_any_pixel(bit: int) -> np.ndarray:
        hits = (footprint_bits & bit) != 0
        return np.bincount(source_index[hits], minlength=n_sources)[:n_sources] > 0

    flat_index, inside = stamp_indices(mask.shape, xs, ys, 1)
    centre_bits = np.bitwise_or.reduce(
        np.where(inside, np.ravel(mask).take(flat_index), 0).astype(np.int64).reshape(n_sources, -1), axis=1
    )
    height, width = mask.shape
    centre_x = np.floor(xs + 0.5)
    centre_y = np.floor(ys + 0.5)
    centre_outside = (centre_x < 0) | (centre_x >= width) | (centre_y < 0) | (centre_y >= height)
    return {
        "edge": centre_outside | on_any_pixel(bits.edge),
        "interpolated_any": on_any_pixel(bits.interpolated),
        "interpolated_center": (centre_bits & bits.interpolated) != 0,
        "saturated_any": on_any_pixel(bits.saturated),
        "saturated_center": (centre_bits & bits.saturated) != 0,
    }


def pixel_flags(
    mask: np.ndarray,
    footprint_ys: np.ndarray,
    footprint_xs: np.ndarray,
    x: float,
    y: float,
    bits: MaskBits = DEFAULT_BITS,
) -> dict[str, bool]:
    """Pixel flags of one source with footprint pixels (footprint_xs, footprint_ys) centred at (x, y)."""
    footprint_ys = np.asarray(footprint_ys)
    flags = pixel_flags_many(
        mask, np.zeros(len(footprint_ys), dtype=np.int64), footprint_ys, footprint_xs, [x], [y], bits
    )
    return {name: bool(values[0]) for name, values in flags.items()}
