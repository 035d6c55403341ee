"""Tests of flux.gaussian and its PSF factor on synthetic Gaussians."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from processccd.meas.gaussian_flux import (
    gaussian_flux,
    gaussian_flux_from_batch,
    gaussian_flux_from_moments,
    gaussian_flux_psf_factor,
)
from processccd.meas.shape import adaptive_moments, adaptive_moments_batch
from processccd.psf import Psf, SdssKLPsf
from reference_impl.psf import GaussianPsf
from test_shape import REAL_FRAMES, bright_isolated_stars, elliptical_gaussian


def test_noiseless_gaussian_gives_true_flux() -> None:
    for ixx, ixy, iyy in [(2.0, 0.0, 2.0), (3.0, 0.8, 2.0), (2.2, -0.9, 4.5)]:
        image = elliptical_gaussian((64, 64), 31.6, 32.2, ixx, ixy, iyy, 12345.0)
        result = gaussian_flux(image, np.ones_like(image), 31.6, 32.2)
        assert not result.flag
        assert result.flux == pytest.approx(12345.0, rel=1e-4)


def test_flux_is_twice_the_weighted_sum_at_convergence() -> None:
    image = elliptical_gaussian((48, 48), 24.0, 24.0, 2.5, 0.3, 1.9, 5e3)
    moments = adaptive_moments(image, np.ones_like(image), 24.0, 24.0, shiftmax=10.0)
    result = gaussian_flux(image, np.ones_like(image), 24.0, 24.0)
    assert result.flux == pytest.approx(2.0 * moments.sum_flux, rel=5e-4)


def test_flux_error_formula() -> None:
    image = elliptical_gaussian((48, 48), 24.0, 24.0, 2.5, 0.3, 1.9, 5e3)
    variance = np.full_like(image, 9.0)
    moments = adaptive_moments(image, variance, 24.0, 24.0, shiftmax=10.0)
    result = gaussian_flux(image, variance, 24.0, 24.0)
    det = moments.ixx * moments.iyy - moments.ixy**2
    assert result.flux_err == pytest.approx(2.0 * math.pi * math.sqrt(det * moments.covariance[0, 0]))
    # circular/elliptical Gaussian with free shape: Var(F) = 8 pi sqrt(det) v (twice the PSF-fit value)
    assert result.flux_err == pytest.approx(math.sqrt(8.0 * math.pi * math.sqrt(det) * 9.0), rel=1e-3)


def test_flux_pulls_have_unit_width_on_background_noise() -> None:
    """Sky-dominated noise (the regime where the centre-pixel variance is the noise of every pixel)."""
    rng = np.random.default_rng(2024)
    x, y, sky_variance = 23.7, 24.4, 100.0
    truth = elliptical_gaussian((48, 48), x, y, 1.8, -0.3, 2.4, 3000.0)  # S/N ~ 45
    variance = np.full_like(truth, sky_variance)
    reference = gaussian_flux(truth, variance, x, y).flux
    pulls = []
    for _ in range(300):
        result = gaussian_flux(truth + rng.normal(0.0, 10.0, truth.shape), variance, x, y)
        assert not result.flag
        pulls.append((result.flux - reference) / result.flux_err)
    assert abs(np.std(pulls) - 1.0) < 0.2
    assert abs(np.mean(pulls)) < 0.25


def test_failures_give_nan() -> None:
    image = -elliptical_gaussian((40, 40), 20.0, 20.0, 2.0, 0.0, 2.0, 1e4)
    result = gaussian_flux(image, np.ones_like(image), 20.0, 20.0)
    assert result.flag and math.isnan(result.flux) and math.isnan(result.flux_err)
    spike = np.zeros((41, 41))
    spike[20, 20] = 100.0  # unweighted-bad with moments 1/12
    result = gaussian_flux(spike, np.ones_like(spike), 20.0, 20.0)
    assert result.flag and math.isnan(result.flux)


def test_unweighted_flux_has_no_error() -> None:
    image = elliptical_gaussian((48, 48), 24.0, 24.0, 3.0, 0.5, 2.0, 1e4)
    moments = adaptive_moments(image, np.ones_like(image), 24.0, 24.0, shiftmax=10.0, max_iter=2)
    assert moments.unweighted and not moments.unweighted_bad
    result = gaussian_flux_from_moments(moments)
    assert result.flag and math.isfinite(result.flux) and math.isnan(result.flux_err)


def test_psf_factor_of_gaussian_psf_is_its_flux() -> None:
    """A peak-normalised Gaussian PSF has flux 2 pi sigma^2 = its pixel sum (the flux.psf factor)."""
    for sigma, (x, y) in [(1.3, (100.0, 200.0)), (1.6, (100.3, 200.0)), (2.0, (55.0, 81.0))]:
        psf = GaussianPsf(sigma)
        factor = gaussian_flux_psf_factor(psf, x, y)
        assert factor == pytest.approx(2.0 * math.pi * sigma**2, rel=2e-3)


class _WingedPsf(Psf):
    """A PSF with a broad plateau beyond a core: the adaptive Gaussian misses the wings."""

    def kernel(self, x: float, y: float) -> np.ndarray:
        yy, xx = np.mgrid[: self.size, : self.size] - self.size // 2
        r2 = xx * xx + yy * yy
        return np.exp(-0.5 * r2 / 1.3**2) + 0.02 * np.exp(-0.5 * r2 / 4.0**2)


def test_psf_factor_smaller_than_pixel_sum_for_winged_psf() -> None:
    psf = _WingedPsf()
    ratio = psf.compute_image(500.0, 500.0).sum() / gaussian_flux_psf_factor(psf, 500.0, 500.0)
    assert 1.05 < ratio < 1.4


@pytest.mark.slow
@pytest.mark.parametrize(("run", "band", "band_index", "gain"), REAL_FRAMES)
def test_bright_isolated_stars_match_the_expected_gaussian_flux(
    demo_dir: Path, run: int, band: str, band_index: int, gain: float
) -> None:
    """Expected flux.gaussian undone to raw: F = F''/a * p/p_psf, E = sqrt(E''^2 - (sa F''/a)^2)/a * p/p_psf."""
    image, variance, rows = bright_isolated_stars(demo_dir, run, band, band_index, gain)
    (psf_path,) = sorted(demo_dir.glob(f"input/{run}/*/objcs/*/psField-*.fit"))
    psf = SdssKLPsf.from_file(psf_path, band)
    ratios = []
    for row in rows:
        x, y = row["centroid.sdss.x"], row["centroid.sdss.y"]
        result = gaussian_flux(image, variance, x, y)
        scale = gaussian_flux_psf_factor(psf, x, y) / psf.compute_image(x, y).sum()
        apcorr, apcorr_err = row["aperturecorrection"], row["aperturecorrection.err"]
        corrected = row["flux.gaussian"] / apcorr
        raw_err = math.sqrt(row["flux.gaussian.err"] ** 2 - (apcorr_err * corrected) ** 2) / apcorr
        ratios.append([result.flux / (corrected * scale), result.flux_err / (raw_err * scale)])
    np.testing.assert_allclose(np.median(ratios, axis=0), 1.0, atol=3e-3)


def test_shiftmax_sets_the_flux_flag_in_the_scalar_and_the_batch_path() -> None:
    """A star 1.5 px from the fixed centre: the weighted centroid strays 1.2 px in the iteration, so it is
    flagged for shiftmax 1, not 10; the flux itself does not depend on shiftmax."""
    image = elliptical_gaussian((41, 41), 21.5, 20.0, 2.0, 0.0, 2.0, 1e4)
    moments = adaptive_moments(image, np.ones_like(image), 20.0, 20.0, shiftmax=10.0)
    assert 1.0 < moments.max_shift < 10.0 and not (moments.unweighted or moments.maxiter)
    loose, tight = gaussian_flux_from_moments(moments, 10.0), gaussian_flux_from_moments(moments, 1.0)
    assert not loose.flag and tight.flag and loose.flux == tight.flux
    batch = adaptive_moments_batch(image[None], 20.0, 20.0, shiftmax=10.0)
    for shiftmax, flag in ((10.0, False), (1.0, True)):
        flux, err, flags = gaussian_flux_from_batch(batch, shiftmax)
        assert flags.tolist() == [flag]
        assert flux[0] == pytest.approx(loose.flux, rel=1e-9) and err[0] == pytest.approx(loose.flux_err, rel=1e-9)


def test_batch_flags_failures_like_the_scalar_path() -> None:
    stamps = np.stack([elliptical_gaussian((41, 41), 20.0, 20.0, 2.0, 0.0, 2.0, 1e4),  # fine
                       -elliptical_gaussian((41, 41), 20.0, 20.0, 2.0, 0.0, 2.0, 1e4)])  # negative: fails
    flux, _, flags = gaussian_flux_from_batch(adaptive_moments_batch(stamps, 20.0, 20.0))
    scalar = [gaussian_flux(stamp, np.ones_like(stamp), 20.0, 20.0) for stamp in stamps]
    assert flags.tolist() == [s.flag for s in scalar] == [False, True]
    assert np.isfinite(flux[0]) and math.isnan(flux[1])
