"""Band-limited ("sinc") circular aperture flux (flux.sinc, measurement-spec.md §3)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from processccd.lanczos import lanczos_shift_matrices
from processccd.meas.psf_flux import stamp_indices, take_stamps

SINC_SIZE = 31  # coefficient image size; the centre is index (15, 15)
LANCZOS_ORDER = 5


@lru_cache(maxsize=8)
def _sinc_coefficients_cached(radius: float) -> np.ndarray:
    from scipy.special import j1  # on first use: reading the configuration needs no scipy

    half = SINC_SIZE // 2
    k = (np.arange(SINC_SIZE) - half) / SINC_SIZE
    k_abs = np.hypot(k[None, :], k[:, None])
    with np.errstate(divide="ignore", invalid="ignore"):
        amplitude = radius * j1(2.0 * np.pi * radius * k_abs) / k_abs
    amplitude[half, half] = np.pi * radius * radius
    offsets = np.arange(SINC_SIZE) - half
    cosines = np.cos(2.0 * np.pi * offsets[:, None] * k[None, :])  # [offset, k]
    coefficients = cosines @ amplitude @ cosines.T / SINC_SIZE**2  # [dy, dx]
    coefficients.setflags(write=False)
    return coefficients


def sinc_coefficients(radius: float = 7.0) -> np.ndarray:
    """Unshifted 31×31 coefficient image of the band-limited aperture of `radius` (Σc = π·radius²).

    c(dx, dy) = (1/31²) ΣΣ A(k) cos(2π kx dx) cos(2π ky dy) on the k-grid (i−15)/31,
    A(k) = r·J1(2π r |k|)/|k|, A(0) = π r². Cached per radius; the array is read-only.
    """
    return _sinc_coefficients_cached(float(radius))


def shifted_sinc_coefficients_many(radius: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """The coefficient image shifted by (x − round(x), y − round(y)) with Lanczos-5 for N positions, (N, 31, 31)."""
    xs = np.atleast_1d(np.asarray(xs, dtype=np.float64))
    ys = np.atleast_1d(np.asarray(ys, dtype=np.float64))
    shift_x = lanczos_shift_matrices(xs - np.floor(xs + 0.5), SINC_SIZE, LANCZOS_ORDER)
    shift_y = lanczos_shift_matrices(ys - np.floor(ys + 0.5), SINC_SIZE, LANCZOS_ORDER)
    return np.einsum("nij,jk,nlk->nil", shift_y, sinc_coefficients(radius), shift_x, optimize=True)


def sinc_flux_of_stamps(data: np.ndarray, var: np.ndarray, coefficients: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """F = sum c I, E = sqrt(sum c^2 var) per stamp; arrays (N, ...) with zeros outside the image."""
    n = len(data)
    data, var, coefficients = data.reshape(n, -1), var.reshape(n, -1), coefficients.reshape(n, -1)
    flux = np.einsum("ij,ij->i", coefficients, data)
    err = np.sqrt(np.einsum("ij,ij->i", coefficients * coefficients, var))
    return flux, err


def sinc_flux_many(
    image: np.ndarray, variance: np.ndarray, xs: np.ndarray, ys: np.ndarray, radius: float = 7.0
) -> tuple[np.ndarray, np.ndarray]:
    """flux.sinc for N sources: F = Σ c·I, E = sqrt(Σ c²·var) over the stamp ∩ image. Returns (flux, err)."""
    xs = np.atleast_1d(np.asarray(xs, dtype=np.float64))
    ys = np.atleast_1d(np.asarray(ys, dtype=np.float64))
    flat_index, inside = stamp_indices(image.shape, xs, ys, SINC_SIZE // 2)
    return sinc_flux_of_stamps(take_stamps(image, flat_index, inside), take_stamps(variance, flat_index, inside),
                               shifted_sinc_coefficients_many(radius, xs, ys))
