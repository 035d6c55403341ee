"""flux.gaussian: the flux of the adaptive elliptical Gaussian (measurement-spec.md §3, LSST 2013 GaussianFlux).

F = 2 pi sqrt(l1 l2) I0 with l1, l2 the eigenvalues of the adaptive moments and I0 the fitted peak
amplitude (F = 2 S for a converged fit); E = 2 pi sqrt(l1 l2) sqrt(C00) from the moments' Fisher matrix.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from processccd.meas.shape import AdaptiveMomentsResult, BatchMomentsResult, adaptive_moments, adaptive_moments_batch
from processccd.psf import Psf

GAUSSIAN_FLUX_SHIFTMAX = 10.0
PSF_FACTOR_PADDING = 5  # pixels of zeros added around the PSF image for the PSF factor


class GaussianFluxResult(NamedTuple):
    """flux.gaussian, its error (NaN when the moments are unweighted) and the failure flag."""

    flux: float
    flux_err: float
    flag: bool


def _flux_scale(moments: AdaptiveMomentsResult) -> float:
    """2 pi sqrt(l1 l2) of the moment matrix; NaN unless it is positive definite."""
    trace = moments.ixx + moments.iyy
    split = math.hypot(moments.ixx - moments.iyy, 2.0 * moments.ixy)
    major, minor = 0.5 * (trace + split), 0.5 * (trace - split)
    if not (minor > 0.0):
        return math.nan
    return 2.0 * math.pi * math.sqrt(major * minor)


def gaussian_flux_from_moments(
    moments: AdaptiveMomentsResult, shiftmax: float = GAUSSIAN_FLUX_SHIFTMAX
) -> GaussianFluxResult:
    """Gaussian flux and error of an adaptive-moments result (NaN when unweighted-bad or not PD).

    The moments may come from a run with any shiftmax (it only sets a flag): the flux flag is
    unweighted / unweighted-bad / maxiter, a centroid shift beyond `shiftmax`, or a NaN flux.
    """
    scale = math.nan if moments.unweighted_bad else _flux_scale(moments)
    flux = scale * moments.i0
    flux_err = scale * math.sqrt(moments.covariance[0, 0]) if moments.covariance[0, 0] >= 0 else math.nan
    failed = moments.unweighted or moments.unweighted_bad or moments.maxiter or moments.max_shift > shiftmax
    return GaussianFluxResult(flux, flux_err, failed or not math.isfinite(flux))


def gaussian_flux(
    image: np.ndarray, variance: np.ndarray, x: float, y: float, shiftmax: float = GAUSSIAN_FLUX_SHIFTMAX
) -> GaussianFluxResult:
    """flux.gaussian (raw, before PSF-factor scaling and aperture correction) at the fixed centre (x, y).

    `flag` is set when any adaptive-moment flag is set or the flux is NaN.
    """
    return gaussian_flux_from_moments(adaptive_moments(image, variance, x, y, shiftmax=shiftmax), shiftmax)


def gaussian_flux_psf_factor(psf: Psf, x: float, y: float) -> float:
    """PSF factor p of flux.gaussian: the same measurement on the peak-normalised PSF image at (x, y),
    padded by 5 px, about the stamp centre ((w-1)/2) with unit variance. NaN if that measurement fails."""
    return gaussian_flux_psf_factor_of_image(psf.compute_image(x, y))


def gaussian_flux_psf_factor_of_image(psf_image: np.ndarray) -> float:
    """`gaussian_flux_psf_factor` for an already computed `Psf.compute_image` stamp."""
    stamp = np.pad(psf_image, PSF_FACTOR_PADDING)
    height, width = stamp.shape
    result = gaussian_flux(stamp, np.ones_like(stamp), (width - 1) / 2.0, (height - 1) / 2.0)
    return result.flux


def _flux_scale_batch(moments: BatchMomentsResult) -> np.ndarray:
    """`_flux_scale` per stamp, NaN also where the moments are unweighted-bad."""
    trace = moments.ixx + moments.iyy
    split = np.hypot(moments.ixx - moments.iyy, 2.0 * moments.ixy)
    major, minor = 0.5 * (trace + split), 0.5 * (trace - split)
    usable = (minor > 0.0) & ~moments.unweighted_bad
    return np.where(usable, 2.0 * math.pi * np.sqrt(np.where(usable, major * minor, 1.0)), math.nan)


def gaussian_flux_from_batch(
    moments: BatchMomentsResult, shiftmax: float = GAUSSIAN_FLUX_SHIFTMAX
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flux, err, flag) of `gaussian_flux_from_moments` for every stamp of a batch result."""
    scale = _flux_scale_batch(moments)
    variance = moments.covariance[:, 0, 0]
    err = np.where(variance >= 0, scale * np.sqrt(np.abs(variance)), math.nan)
    flux = scale * moments.i0
    failed = moments.unweighted | moments.unweighted_bad | moments.maxiter | (moments.max_shift > shiftmax)
    return flux, err, failed | ~np.isfinite(flux)


def gaussian_flux_psf_factor_batch(psf_images: np.ndarray) -> np.ndarray:
    """`gaussian_flux_psf_factor_of_image` of N `Psf.compute_image` stamps (N, H, W) at once, (N,)."""
    psf_images = np.asarray(psf_images, dtype=np.float64)
    padding = PSF_FACTOR_PADDING
    stamps = np.pad(psf_images, ((0, 0), (padding, padding), (padding, padding)))
    height, width = stamps.shape[1:]
    moments = adaptive_moments_batch(stamps, (width - 1) / 2.0, (height - 1) / 2.0, shiftmax=GAUSSIAN_FLUX_SHIFTMAX)
    return _flux_scale_batch(moments) * moments.i0
