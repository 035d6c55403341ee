"""A circular Gaussian PSF, the same at every position: the synthetic PSF of the tests (production reads the
SDSS KL PSF, `processccd.psf.SdssKLPsf`); unit-sum kernels and images of any `Psf`."""

from __future__ import annotations

import numpy as np

from processccd.psf import KERNEL_SIZE, Psf


class GaussianPsf(Psf):
    """A circular Gaussian of width `sigma` pixels, the same at every position."""

    def __init__(self, sigma: float, size: int = KERNEL_SIZE) -> None:
        self.sigma = float(sigma)
        self.size = size

    def kernel(self, x: float, y: float) -> np.ndarray:
        c = self.size // 2
        yy, xx = np.mgrid[: self.size, : self.size] - c
        return np.exp(-0.5 * (xx * xx + yy * yy) / self.sigma**2)


def normalized_kernel(psf: Psf, x: float, y: float) -> np.ndarray:
    """`psf.kernel(x, y)` divided by its sum (unit-sum, centred, not shifted)."""
    k = psf.kernel(x, y)
    return k / k.sum()


def unit_sum_image(psf: Psf, x: float, y: float) -> np.ndarray:
    """`psf.compute_image(x, y)` divided by its sum."""
    img = psf.compute_image(x, y)
    return img / img.sum()
