"""flux.sinc of one source: the reference of `processccd.meas.aperture_flux.sinc_flux_many`, which measures
all sources with one einsum (Lanczos shift matrices instead of `shift_image` per source)."""

from __future__ import annotations

import numpy as np

from processccd.lanczos import shift_image
from processccd.meas.aperture_flux import LANCZOS_ORDER, SINC_SIZE, sinc_coefficients
from processccd.meas.psf_flux import stamp_indices, take_stamps


def gather_stamps(
    image: np.ndarray, xs: np.ndarray, ys: np.ndarray, half_width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Stamps of size 2*half_width+1 centred on pixels (round(x), round(y)), zero outside the image.

    Returns (stamps (N, n, n) float64, inside (N, n, n) bool).
    """
    flat_index, inside = stamp_indices(image.shape, np.atleast_1d(xs), np.atleast_1d(ys), half_width)
    return take_stamps(image, flat_index, inside), inside


def shifted_sinc_coefficients(radius: float, x: float, y: float) -> np.ndarray:
    """Coefficient image shifted by (x − round(x), y − round(y)) with Lanczos-5 (centre on round(x, y))."""
    return shift_image(sinc_coefficients(radius), x - np.floor(x + 0.5), y - np.floor(y + 0.5), LANCZOS_ORDER)


def sinc_flux(
    image: np.ndarray, variance: np.ndarray, x: float, y: float, radius: float = 7.0
) -> tuple[float, float]:
    """flux.sinc of one source at (x, y), using `shift_image` directly. Returns (flux, err)."""
    coefficients = shifted_sinc_coefficients(radius, x, y)
    data, _ = gather_stamps(image, np.array([x]), np.array([y]), SINC_SIZE // 2)
    var, _ = gather_stamps(variance, np.array([x]), np.array([y]), SINC_SIZE // 2)
    flux = float(np.sum(coefficients * data[0]))
    err = float(np.sqrt(np.sum(coefficients * coefficients * var[0])))
    return flux, err
