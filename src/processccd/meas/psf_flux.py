"""PSF-weighted flux (flux.psf, measurement-spec.md §3), for one source or vectorised over many."""

from __future__ import annotations

import numpy as np

from processccd.psf import Psf


def nearest_pixel(v: np.ndarray | float) -> np.ndarray:
    """round(v) = floor(v + 0.5) as an integer array (the pixel whose centre is nearest)."""
    return np.floor(np.asarray(v, dtype=np.float64) + 0.5).astype(np.int64)


def stamp_indices(
    shape: tuple[int, int], xs: np.ndarray, ys: np.ndarray, half_width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices into an image of `shape` of the (2h+1)² stamps centred on pixels (round(x), round(y)).

    Returns (flat_index (N, n, n) int64, inside (N, n, n) bool); `inside` marks stamp pixels within the
    image (indices of the others are clipped to the border and must be masked by the caller).
    Works for any centre, also far outside the image.
    """
    height, width = shape
    offsets = np.arange(-half_width, half_width + 1)
    rows = nearest_pixel(ys)[:, None] + offsets[None, :]
    cols = nearest_pixel(xs)[:, None] + offsets[None, :]
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
    flat_index = (np.clip(rows, 0, height - 1) * width)[:, :, None] + np.clip(cols, 0, width - 1)[:, None, :]
    return flat_index, inside


def take_stamps(image: np.ndarray, flat_index: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """The stamps of `image` at `flat_index` as float64, zero where not `inside`."""
    values = np.ravel(image).take(flat_index)
    return np.where(inside, values, 0).astype(np.float64)


def psf_flux_many(
    image: np.ndarray,
    variance: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    psf_images: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """flux.psf for N sources at once.

    `psf_images` (N, n, n), n odd, holds each source's PSF image as `Psf.compute_image` returns it
    (peak-normalised, shifted, centre index on pixel (round(x), round(y))).
    F = Σw·I·Σw/Σw², E = sqrt(Σw²·var)·|Σw|/Σw², p = Σw; all sums over the stamp ∩ image.
    Returns (flux, err, psf_factor), each (N,) float64.
    """
    xs = np.atleast_1d(np.asarray(xs, dtype=np.float64))
    ys = np.atleast_1d(np.asarray(ys, dtype=np.float64))
    psf_images = np.asarray(psf_images, dtype=np.float64)
    if psf_images.ndim == 2:
        psf_images = psf_images[None]
    half_width = psf_images.shape[-1] // 2
    flat_index, inside = stamp_indices(image.shape, xs, ys, half_width)
    return psf_flux_of_stamps(take_stamps(image, flat_index, inside), take_stamps(variance, flat_index, inside),
                              np.where(inside, psf_images, 0.0))


def psf_flux_of_stamps(data: np.ndarray, var: np.ndarray, weights: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """flux.psf of stamps (N, n, n): data, variance and PSF weights, all zero outside the image.

    Returns (flux, err, psf_factor = sum of the weights).
    """
    n = len(data)
    data, var, weights = data.reshape(n, -1), var.reshape(n, -1), weights.reshape(n, -1)
    sum_w = weights.sum(axis=1)
    sum_w2 = np.einsum("ij,ij->i", weights, weights)
    sum_wi = np.einsum("ij,ij->i", weights, data)
    sum_w2v = np.einsum("ij,ij->i", weights * weights, var)
    with np.errstate(divide="ignore", invalid="ignore"):
        flux = sum_wi * sum_w / sum_w2
        err = np.sqrt(sum_w2v) * np.abs(sum_w) / sum_w2
    return flux, err, sum_w


def psf_images_at(psf: Psf, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Stack of `psf.compute_image(x, y)` for every source, shape (N, n, n)."""
    return psf.compute_images(np.atleast_1d(xs), np.atleast_1d(ys))
