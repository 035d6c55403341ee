"""Sub-pixel shifts with a normalised separable Lanczos kernel (as afw offsetImage did)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


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
    out = np.asarray(image, dtype=np.float64)
    if dx != 0.0:
        out = ndimage.correlate1d(out, lanczos_weights(dx, order), axis=1, mode="constant", cval=0.0)
    if dy != 0.0:
        out = ndimage.correlate1d(out, lanczos_weights(dy, order), axis=0, mode="constant", cval=0.0)
    return out
