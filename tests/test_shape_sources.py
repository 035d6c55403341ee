"""`adaptive_moments_sources` (compiled, all sources of one image) equals the numpy reference iteration source by
source, also with each source's own footprint put back into a noise-replaced image."""

from __future__ import annotations

import numpy as np
import pytest

from processccd.meas import shape as shape_module
from processccd.meas.noise_replacement import NoiseReplacer
from processccd.meas.shape import BatchMomentsResult, adaptive_moments_sources

RTOL = 1e-10
FLAG_NAMES = ("unweighted_bad", "unweighted", "shift", "maxiter")
HEIGHT, WIDTH = 500, 700


def add_gaussian(image: np.ndarray, x: float, y: float, moments: tuple[float, float, float], flux: float) -> None:
    """Add an elliptical Gaussian of total `flux` and moments (ixx, ixy, iyy) at (x, y), in place, out to
    10 sigma (where it is below 1e-21 of its peak)."""
    ixx, ixy, iyy = moments
    reach = int(10.0 * np.sqrt(max(ixx, iyy))) + 2
    x0, y0 = max(int(x) - reach, 0), max(int(y) - reach, 0)
    window = image[y0 : int(y) + reach + 1, x0 : int(x) + reach + 1]
    yy, xx = np.mgrid[: window.shape[0], : window.shape[1]].astype(np.float64)
    dx, dy = xx + x0 - x, yy + y0 - y
    det = ixx * iyy - ixy * ixy
    exponent = (iyy * dx * dx - 2.0 * ixy * dx * dy + ixx * dy * dy) / det
    window += flux / (2.0 * np.pi * np.sqrt(det)) * np.exp(-0.5 * exponent)


def random_moments(rng: np.random.Generator, sigma: float) -> tuple[float, float, float]:
    """Moments of a Gaussian of size `sigma` with a random ellipticity (up to 0.6) and position angle."""
    ellipticity, angle = rng.uniform(0.0, 0.6), rng.uniform(0.0, np.pi)
    major, minor = sigma**2 * (1 + ellipticity), sigma**2 * (1 - ellipticity)
    c, s = np.cos(angle), np.sin(angle)
    return major * c * c + minor * s * s, (major - minor) * c * s, major * s * s + minor * c * c


def synthetic_field(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(image, variance, x, y): noisy Gaussians of many sizes, some at the edges, a few large, tiny or
    negative; the centres are the true ones jittered by up to 0.3 px (as a measured centroid would be)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((HEIGHT, WIDTH))
    xs, ys = [], []
    kinds = [("star", 90), ("galaxy", 30), ("edge", 24), ("large", 3), ("tiny", 3), ("negative", 3)]
    for kind, count in kinds:
        for _ in range(count):
            if kind == "edge":
                near = rng.uniform(0.0, 6.0)
                x, y = rng.uniform(0.0, WIDTH - 1), rng.uniform(0.0, HEIGHT - 1)
                side = rng.integers(4)
                x = near if side == 0 else WIDTH - 1 - near if side == 1 else x
                y = near if side == 2 else HEIGHT - 1 - near if side == 3 else y
            else:
                x, y = rng.uniform(0.0, WIDTH - 1), rng.uniform(0.0, HEIGHT - 1)
            sigma = {"star": 1.4, "edge": 1.6, "large": 9.0, "tiny": 0.3}.get(kind, rng.uniform(1.5, 3.5))
            sigma *= rng.uniform(0.9, 1.1)
            flux = np.exp(rng.uniform(np.log(2e3), np.log(5e4))) * (-1.0 if kind == "negative" else 1.0)
            flux *= 10.0 if kind == "large" else 1.0
            add_gaussian(image, x, y, random_moments(rng, sigma), flux)
            xs.append(x + rng.uniform(-0.3, 0.3))
            ys.append(y + rng.uniform(-0.3, 0.3))
    # corners: boxes clipped on two sides
    for x, y in ((0.4, 0.7), (WIDTH - 1.2, HEIGHT - 0.6), (1.0, HEIGHT - 2.5)):
        add_gaussian(image, x, y, random_moments(rng, 1.5), 5e3)
        xs.append(x)
        ys.append(y)
    variance = 4.0 + np.abs(image) / 3.0
    image += rng.normal(0.0, 1.0, image.shape) * np.sqrt(variance)
    return image, variance, np.clip(xs, 0.0, WIDTH - 1.0), np.clip(ys, 0.0, HEIGHT - 1.0)


def assert_matches_numpy(
    result: BatchMomentsResult, image: np.ndarray, variance: np.ndarray, x: np.ndarray, y: np.ndarray,
    replacer: NoiseReplacer | None = None, **options: float,
) -> None:
    """Non-fallback sources equal the numpy run on the full image (with the source's own footprint inserted),
    values to RTOL, flags exactly; fallback sources carry no result."""
    fallback = set(result.fallback.tolist())
    for index in range(len(x)):
        if index in fallback:
            assert np.isnan(result.ixx[index]) and not result.flag[index], index
            continue
        if replacer is not None:
            replacer.insert(index)
        scalar = shape_module._adaptive_moments_numpy(image, variance, float(x[index]), float(y[index]), **options)
        if replacer is not None:
            replacer.remove(index)
        for name in FLAG_NAMES:
            assert getattr(result, name)[index] == getattr(scalar, name), (index, name)
        for name in ("ixx", "iyy", "i0", "sum_flux", "max_shift"):
            np.testing.assert_allclose(getattr(result, name)[index], getattr(scalar, name), rtol=RTOL, err_msg=name)
        size = abs(scalar.ixx) + abs(scalar.iyy)
        np.testing.assert_allclose(result.ixy[index], scalar.ixy, rtol=RTOL, atol=RTOL * size)
        # covariance terms that vanish for round sources are compared on the scale sqrt(C_ii C_jj)
        assert np.array_equal(np.isnan(result.covariance[index]), np.isnan(scalar.covariance)), index
        scale = np.sqrt(np.abs(np.diag(scalar.covariance)))
        error = np.nan_to_num(np.abs(result.covariance[index] - scalar.covariance))
        assert np.all(error <= np.nan_to_num(RTOL * np.outer(scale, scale))), index
        for name in ("err_ixx", "err_ixy", "err_iyy"):
            np.testing.assert_allclose(getattr(result, name)[index], getattr(scalar, name), rtol=RTOL, err_msg=name)


@pytest.mark.parametrize("seed", [1, 2])
def test_sources_match_numpy_on_full_image(seed: int) -> None:
    image, variance, x, y = synthetic_field(seed)
    result = adaptive_moments_sources(image, variance, x, y)
    assert_matches_numpy(result, image, variance, x, y)
    assert result.fallback.size == 0
    assert not result.flag[:90].all() and result.unweighted_bad[-6:-3].all()  # the negative sources fail


def test_own_footprints_are_put_back_into_the_noised_image() -> None:
    image, variance, x, y = synthetic_field(3)
    image = image.astype(np.float32)
    yy, xx = np.mgrid[:HEIGHT, :WIDTH]
    near = np.hypot(xx[None] - x[:, None, None], yy[None] - y[:, None, None]) < 4.0
    owner = np.where(near.any(axis=0), np.argmax(near, axis=0), -1)  # disjoint footprints
    ys, xs = np.nonzero(owner >= 0)
    replacer = NoiseReplacer(image, owner[ys, xs], ys, xs, seed=3, n_footprints=len(x))
    noised = image.copy()
    result = adaptive_moments_sources(image, variance, x, y, replacer.footprint_deltas())
    assert np.array_equal(image, noised)  # every footprint is noise again
    assert_matches_numpy(result, image, variance, x, y, replacer)
    alone = adaptive_moments_sources(image, variance, x, y)  # the source's own pixels matter
    assert not np.allclose(alone.sum_flux, result.sum_flux)


def test_options_and_failure_flags_match_numpy() -> None:
    image, variance, x, y = synthetic_field(4)
    options = {"shiftmax": 0.2, "tol1": 1e-7, "tol2": 1e-6}
    result = adaptive_moments_sources(image, variance, x, y, **options)
    assert_matches_numpy(result, image, variance, x, y, **options)
    assert result.shift.any() and not result.shift.all()
    limited = adaptive_moments_sources(image, variance, x, y, max_iter=5)
    assert 20 < limited.maxiter.sum() < len(x) - 20
    assert_matches_numpy(limited, image, variance, x, y, max_iter=5)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NaN sums in the numpy code
def test_non_finite_pixels_and_centres_fall_back() -> None:
    image, variance, x, y = synthetic_field(5)
    image[int(round(y[0])), int(round(x[0]))] = np.nan
    x[1] = np.nan
    result = adaptive_moments_sources(image, variance, x, y)
    assert {0, 1} <= set(result.fallback.tolist())
    assert result.fallback.size < 10
    assert_matches_numpy(result, image, variance, x, y)
