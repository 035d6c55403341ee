"""A circular Gaussian PSF, the same at every position: the synthetic PSF of the tests (production reads the
SDSS KL PSF, `processccd.psf.SdssKLPsf`)."""

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
