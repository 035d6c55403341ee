"""The compiled batch adaptive moments equal the numpy reference iteration stamp by stamp (values to 1e-10, flags
exactly)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from processccd.meas import shape as shape_module
from processccd.meas.gaussian_flux import gaussian_flux_psf_factor_batch, gaussian_flux_psf_factor_of_image
from processccd.meas.shape import (
    BatchMomentsResult,
    adaptive_moments_batch,
    psf_adaptive_sigma,
    psf_adaptive_sigma_batch,
)
from processccd.psf import SdssKLPsf

RTOL = 1e-10
FLAG_NAMES = ("unweighted_bad", "unweighted", "shift", "maxiter")
VALUE_NAMES = ("ixx", "iyy", "i0", "sum_flux")


def gaussian_stamp(size: int, x: float, y: float, ixx: float, ixy: float, iyy: float, flux: float) -> np.ndarray:
    """An elliptical Gaussian of total flux `flux` and moments (ixx, ixy, iyy) at the pixel centres."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    dx, dy = xx - x, yy - y
    det = ixx * iyy - ixy * ixy
    exponent = (iyy * dx * dx - 2.0 * ixy * dx * dy + ixx * dy * dy) / det
    return flux / (2.0 * np.pi * np.sqrt(det)) * np.exp(-0.5 * exponent)


def assert_matches_scalar(
    batch: BatchMomentsResult, stamps: np.ndarray, xc: float, yc: float, pixel_variance: float = 1.0, **options: float
) -> None:
    """Every stamp's batch result equals the numpy reference run: values to RTOL, flags exactly."""
    variance = np.full(stamps.shape[1:], pixel_variance)
    for index, stamp in enumerate(stamps):
        scalar = shape_module._adaptive_moments_numpy(stamp, variance, xc, yc, **options)
        for name in FLAG_NAMES:
            assert getattr(batch, name)[index] == getattr(scalar, name), (index, name)
        for name in VALUE_NAMES:
            np.testing.assert_allclose(getattr(batch, name)[index], getattr(scalar, name), rtol=RTOL, err_msg=name)
        size = abs(scalar.ixx) + abs(scalar.iyy)
        np.testing.assert_allclose(batch.ixy[index], scalar.ixy, rtol=RTOL, atol=RTOL * size)
        np.testing.assert_allclose(batch.max_shift[index], scalar.max_shift, rtol=RTOL, atol=1e-12)
        # off-diagonal terms that vanish for round sources are compared on the scale sqrt(C_ii C_jj)
        scale = np.sqrt(np.abs(np.diag(scalar.covariance)))
        covariance_error = np.abs(batch.covariance[index] - scalar.covariance)
        assert np.array_equal(np.isnan(batch.covariance[index]), np.isnan(scalar.covariance))
        assert np.all(np.nan_to_num(covariance_error) <= np.nan_to_num(RTOL * np.outer(scale, scale))), index
        np.testing.assert_allclose(batch.covariance[index, 0, 0], scalar.covariance[0, 0], rtol=RTOL)


def synthetic_stamps(size: int) -> np.ndarray:
    """Gaussians from tiny (sub-sampled) to wider than the stamp, round and elliptical, slightly off centre."""
    rng = np.random.default_rng(5)
    centre = (size - 1) / 2.0
    stamps = []
    for sigma in (0.25, 0.4, 0.5, 0.7, 1.0, 1.5, 2.2, 3.5, 6.0):
        for ellipticity, angle in ((0.0, 0.0), (0.3, 0.4), (0.6, -1.1)):
            major, minor = sigma**2 * (1 + ellipticity), sigma**2 * (1 - ellipticity)
            c, s = np.cos(angle), np.sin(angle)
            ixx, ixy, iyy = major * c * c + minor * s * s, (major - minor) * c * s, major * s * s + minor * c * c
            dx, dy = rng.uniform(-0.5, 0.5, 2)
            stamps.append(gaussian_stamp(size, centre + dx, centre + dy, ixx, ixy, iyy, rng.uniform(1.0, 1e4)))
    return np.stack(stamps)


def test_synthetic_gaussians_match_scalar_including_subsampled() -> None:
    stamps = synthetic_stamps(31)
    batch = adaptive_moments_batch(stamps, 15.0, 15.0)
    assert_matches_scalar(batch, stamps, 15.0, 15.0)  # the tiny Gaussians are sub-sampled
    assert batch.fallback.size == 0
    assert not batch.flag[3 * 3 : 3 * 8].any()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NaN sums in the numpy code
def test_non_finite_pixels_go_through_the_numpy_code() -> None:
    stamps = synthetic_stamps(31)[12:16].copy()
    stamps[0, 15, 15] = np.nan  # in every box
    stamps[1, 0, 0] = np.inf  # only in boxes that grow to the corner
    stamps[2, 15, 16] = -np.inf
    batch = adaptive_moments_batch(stamps, 15.0, 15.0)
    assert 0 in batch.fallback and 2 in batch.fallback and 3 not in batch.fallback
    assert batch.unweighted_bad[0] and np.isnan(batch.ixx[0])
    assert_matches_scalar(batch, stamps, 15.0, 15.0)


def test_failure_paths_and_off_centre_stamps_match_scalar() -> None:
    size = 41
    good = gaussian_stamp(size, 20.0, 20.0, 2.0, 0.3, 1.5, 100.0)
    rng = np.random.default_rng(3)
    stamps = np.stack(
        [
            good,
            np.zeros((size, size)),  # no flux: unweighted-bad
            -good,  # negative: unweighted-bad
            gaussian_stamp(size, 23.0, 20.0, 9.0, 0.0, 9.0, 100.0),  # weighted centroid 2.6 px away: shift flag
            gaussian_stamp(size, 23.5, 18.0, 2.0, 0.0, 2.0, 100.0),  # a small source 4 px away: unweighted
            good + rng.normal(0.0, 0.05, (size, size)),  # noisy
            rng.normal(0.0, 1.0, (size, size)),  # pure noise: usually a failure of the weighted iteration
            np.pad(np.ones((1, 1)), size // 2),  # a single pixel
        ]
    )
    batch = adaptive_moments_batch(stamps, 20.0, 20.0, pixel_variance=2.5, shiftmax=2.0)
    assert_matches_scalar(batch, stamps, 20.0, 20.0, pixel_variance=2.5, shiftmax=2.0)
    assert batch.unweighted_bad[1] and batch.unweighted_bad[2]
    assert batch.shift[3]
    assert batch.unweighted[4] and not batch.unweighted_bad[4]
    assert not batch.flag[0] and batch.fallback.size == 0


@pytest.mark.parametrize(("tol1", "tol2"), [(1e-5, 1e-4), (1e-7, 1e-6), (1e-2, 1e-6)])
def test_random_noisy_gaussians_match_scalar(tol1: float, tol2: float) -> None:
    rng = np.random.default_rng(11)
    stamps = []
    for _ in range(150):
        sigma2 = rng.uniform(0.5, 6.0)
        ellipticity, angle = rng.uniform(0.0, 0.7), rng.uniform(0.0, np.pi)
        major, minor = sigma2 * (1 + ellipticity), sigma2 * (1 - ellipticity)
        c, s = np.cos(angle), np.sin(angle)
        ixx, ixy, iyy = major * c * c + minor * s * s, (major - minor) * c * s, major * s * s + minor * c * c
        x, y = 15.0 + rng.uniform(-1.0, 1.0, 2)
        stamps.append(gaussian_stamp(31, x, y, ixx, ixy, iyy, 1e3) + rng.normal(0.0, 0.02, (31, 31)))
    stamps = np.stack(stamps)
    batch = adaptive_moments_batch(stamps, 15.0, 15.0, tol1=tol1, tol2=tol2)
    assert_matches_scalar(batch, stamps, 15.0, 15.0, tol1=tol1, tol2=tol2)


def test_iteration_limit_matches_scalar() -> None:
    stamps = synthetic_stamps(31)[9:18]
    batch = adaptive_moments_batch(stamps, 15.0, 15.0, max_iter=3)
    assert_matches_scalar(batch, stamps, 15.0, 15.0, max_iter=3)
    assert batch.maxiter.any()


def test_convenience_wrappers_match_scalar() -> None:
    stamps = synthetic_stamps(31)
    np.testing.assert_allclose(
        psf_adaptive_sigma_batch(stamps), [psf_adaptive_sigma(stamp) for stamp in stamps], rtol=RTOL
    )
    images = stamps / stamps[:, 15, 15][:, None, None]
    np.testing.assert_allclose(
        gaussian_flux_psf_factor_batch(images), [gaussian_flux_psf_factor_of_image(image) for image in images],
        rtol=RTOL,
    )


@pytest.mark.slow
@pytest.mark.parametrize("band", ["u", "g", "r", "i", "z"])
def test_real_sdss_psf_stamps_match_scalar(demo_dir: Path, band: str) -> None:
    psf = SdssKLPsf.from_file(demo_dir / "input/4192/40/objcs/4/psField-004192-4-0300.fit", band)
    rng = np.random.default_rng(ord(band))
    xs, ys = rng.uniform(0.0, 2047.0, 200), rng.uniform(0.0, 1360.0, 200)
    kernels = psf.kernels(xs, ys)
    assert_matches_scalar(adaptive_moments_batch(kernels, 15.0, 15.0), kernels, 15.0, 15.0)
    np.testing.assert_allclose(
        psf_adaptive_sigma_batch(kernels), [psf_adaptive_sigma(kernel) for kernel in kernels], rtol=RTOL
    )
    images = psf.compute_images(xs, ys)
    np.testing.assert_allclose(
        gaussian_flux_psf_factor_batch(images), [gaussian_flux_psf_factor_of_image(image) for image in images],
        rtol=RTOL,
    )
    padded = np.pad(images, ((0, 0), (5, 5), (5, 5)))
    assert_matches_scalar(adaptive_moments_batch(padded, 20.0, 20.0, shiftmax=10.0), padded, 20.0, 20.0, shiftmax=10.0)
