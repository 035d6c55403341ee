"""flux.psf of one source: a wrapper of `processccd.meas.psf_flux.psf_flux_many` for the tests."""

from __future__ import annotations

import numpy as np

from processccd.meas.psf_flux import psf_flux_many
from processccd.psf import Psf


def psf_flux(
    image: np.ndarray, variance: np.ndarray, x: float, y: float, psf: Psf
) -> tuple[float, float, float]:
    """flux.psf of one source at (x, y): returns (flux, err, psf_factor = Σw over the stamp ∩ image)."""
    flux, err, factor = psf_flux_many(image, variance, np.array([x]), np.array([y]), psf.compute_image(x, y))
    return float(flux[0]), float(err[0]), float(factor[0])
