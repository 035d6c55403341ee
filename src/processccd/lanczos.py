"""Sub-pixel shifts with a normalised separable Lanczos kernel (as afw offsetImage did)."""

from __future__ import annotations

import numpy as np


def lanczos_weights(frac: float, order: int = 5) -> np.ndarray:
    """Weights w[m], m = 0..2*order, such that out[i] = sum_m w[m] * in[i + m - order].

    The content moves by +frac pixels; the weights are normalised to unit sum.
    """
    k = np.arange(-order, order + 1, dtype=np.float64) + frac
    w = np.sinc(k) * np.sinc(k / order)
    w[np.abs(k) >= order] = 0.0
    return w / w.sum()


def shift_image(image: np.ndarray, dx: float, dy: float, order: int = 5) -> np.ndarray:
    """Shift `image` by (dx, dy) pixels (content moves to +x, +y), zero padding outside."""
    from scipy import ndimage  # on first use: reading the configuration needs no scipy

    out = np.asarray(image, dtype=np.float64)
    if dx != 0.0:
        out = ndimage.correlate1d(out, lanczos_weights(dx, order), axis=1, mode="constant", cval=0.0)
    if dy != 0.0:
        out = ndimage.correlate1d(out, lanczos_weights(dy, order), axis=0, mode="constant", cval=0.0)
    return out


def lanczos_shift_matrices(fractions: np.ndarray, size: int, order: int = 5) -> np.ndarray:
    """Matrices M (N, size, size) with (M @ v)[i] = sum_m w[m] v[i + m - order] (zero outside).

    Applying M along an axis equals `shift_image` along that axis for the shift `fractions[n]`; a zero
    shift gives the identity (as `shift_image`, which skips the convolution).
    """
    fractions = np.asarray(fractions, dtype=np.float64).reshape(-1)
    taps = np.arange(-order, order + 1)
    k = taps[None, :] + fractions[:, None]
    weights = np.sinc(k) * np.sinc(k / order)
    weights[np.abs(k) >= order] = 0.0
    weights /= weights.sum(axis=1, keepdims=True)
    weights[fractions == 0.0] = (taps == 0).astype(np.float64)
    matrices = np.zeros((len(fractions), size, size))
    rows = np.arange(size)[:, None]
    cols = rows + taps[None, :]
    valid = (cols >= 0) & (cols < size)
    row_idx = np.broadcast_to(rows, cols.shape)[valid]
    col_idx = cols[valid]
    tap_idx = np.broadcast_to(np.arange(len(taps))[None, :], cols.shape)[valid]
    matrices[:, row_idx, col_idx] = weights[:, tap_idx]
    return matrices


def shift_images(images: np.ndarray, dx: np.ndarray, dy: np.ndarray, order: int = 5) -> np.ndarray:
    """`shift_image` of every square image of a stack (N, n, n) by its own (dx[i], dy[i])."""
    size = images.shape[-1]
    shift_x = lanczos_shift_matrices(dx, size, order)
    shift_y = lanczos_shift_matrices(dy, size, order)
    return np.einsum("nij,njk,nlk->nil", shift_y, images, shift_x, optimize=True)
