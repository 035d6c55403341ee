"""Label images and the Manhattan dilation of a binary image: references of what `processccd.detection` does
on spans and runs (`Footprints.runs`, `pixel_kernels.or_diamonds` into the mask)."""

from __future__ import annotations

import numpy as np

from processccd.detection import Footprints, _label_pixels


def label_image(footprints: Footprints, shape: tuple[int, int]) -> np.ndarray:
    """int32 image of `shape`: 0 = no footprint, i + 1 = footprint i."""
    labels = np.zeros(shape, dtype=np.int32)
    labels[footprints.pixel_y, footprints.pixel_x] = np.repeat(
        np.arange(1, len(footprints) + 1, dtype=np.int32), np.diff(footprints.pixel_offsets))
    return labels


def lsst_footprint_labels(binary: np.ndarray) -> np.ndarray:
    """int32 label image of the 8-connected footprints of `binary`: 0 = none, i + 1 = i-th emitted."""
    pixels = _label_pixels(np.ascontiguousarray(binary, dtype=bool).view(np.uint8), np.uint8(1))
    labels = np.zeros(np.shape(binary), dtype=np.int32)
    labels[pixels.y, pixels.x] = pixels.footprint + 1
    return labels


def grow_diamond(binary: np.ndarray, radius: int) -> np.ndarray:
    """Dilation by the Manhattan ball |dx| + |dy| <= radius, clipped to the array."""
    from processccd.pixel_kernels import or_diamonds, threshold_spans

    binary = np.ascontiguousarray(binary, dtype=bool)
    grown = np.zeros(binary.shape, dtype=np.uint8)
    or_diamonds(grown, *threshold_spans(binary.view(np.uint8), np.uint8(1)), radius, 1)
    return grown.view(bool)
