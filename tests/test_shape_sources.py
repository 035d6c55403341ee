"""`adaptive_moments_stamps` on stamps cut from images equals the scalar `adaptive_moments` on the full image."""

from __future__ import annotations

import numpy as np
import pytest

from processccd.meas.psf_flux import nearest_pixel, stamp_indices, take_stamps
from processccd.meas.shape import BatchMomentsResult, adaptive_moments, adaptive_moments_stamps

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


def measure_stamps(
    image: np.ndarray, variance: np.ndarray, x: np.ndarray, y: np.ndarray, size: int, **options: float
) -> BatchMomentsResult:
    """Cut (size x size) stamps centred on (round(x), round(y)) and measure them."""
    half = size // 2
    flat_index, inside = stamp_indices(image.shape, x, y, half)
    stamps = take_stamps(image, flat_index, inside)
    xc, yc = x - nearest_pixel(x) + half, y - nearest_pixel(y) + half
    return adaptive_moments_stamps(stamps, inside, xc, yc, variance[nearest_pixel(y), nearest_pixel(x)], **options)


def assert_matches_scalar(
    result: BatchMomentsResult, image: np.ndarray, variance: np.ndarray, x: np.ndarray, y: np.ndarray,
    **options: float,
) -> None:
    """Non-fallback sources equal the scalar run on the full image (values to RTOL, flags exactly); fallback
    sources carry no result."""
    fallback = set(result.fallback.tolist())
    for index in range(len(x)):
        if index in fallback:
            assert np.isnan(result.ixx[index]) and not result.flag[index], index
            continue
        scalar = adaptive_moments(image, variance, float(x[index]), float(y[index]), **options)
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
def test_stamps_match_scalar_on_full_image(seed: int) -> None:
    image, variance, x, y = synthetic_field(seed)
    result = measure_stamps(image, variance, x, y, 41)
    assert_matches_scalar(result, image, variance, x, y)
    # large (box beyond the stamp), tiny (sub-sampled) and negative sources fall back; stars almost never do
    special = np.arange(90 + 30 + 24, 90 + 30 + 24 + 9)
    assert set(special.tolist()) <= set(result.fallback.tolist())
    # stars fall back only when blends make the scalar iteration fail, or as one of the last few iterating
    star_fallbacks = result.fallback[np.isin(result.fallback, np.r_[0:90, 120:144])]
    unweighted = [adaptive_moments(image, variance, x[i], y[i]).unweighted for i in star_fallbacks]
    assert star_fallbacks.size - sum(unweighted) <= 4
    assert result.fallback.size <= len(x) // 5
    # edge sources whose boxes the image clips are measured in the batch
    clipped = (np.minimum(x, WIDTH - 1 - x) < 3.0) | (np.minimum(y, HEIGHT - 1 - y) < 3.0)
    clipped[result.fallback] = False
    assert clipped.sum() >= 10


def test_small_stamps_fall_back_where_the_box_crosses_into_the_image() -> None:
    image, variance, x, y = synthetic_field(3)
    size = 15
    result = measure_stamps(image, variance, x, y, size)
    assert_matches_scalar(result, image, variance, x, y)
    assert 20 < result.fallback.size < len(x) - 20
    # a source whose final box (one of its iteration boxes) leaves the stamp inside the image falls back
    half = size // 2
    for index in range(len(x)):
        scalar = adaptive_moments(image, variance, float(x[index]), float(y[index]))
        if scalar.flag:
            continue
        rad = 4.0 * np.sqrt(max(scalar.ixx, scalar.iyy)) + 0.5
        low_x, low_y = np.floor(x[index] - rad), np.floor(y[index] - rad)
        high_x, high_y = np.floor(x[index] + rad), np.floor(y[index] + rad)
        centre_x, centre_y = nearest_pixel(x[index]), nearest_pixel(y[index])
        crosses = (
            (centre_x - half - 1 >= 0 and low_x < centre_x - half)
            or (centre_x + half + 1 < WIDTH and high_x > centre_x + half)
            or (centre_y - half - 1 >= 0 and low_y < centre_y - half)
            or (centre_y + half + 1 < HEIGHT and high_y > centre_y + half)
        )
        if crosses:
            assert index in result.fallback, index


def test_options_and_failure_flags_match_scalar() -> None:
    image, variance, x, y = synthetic_field(4)
    options = {"shiftmax": 0.2, "tol1": 1e-7, "tol2": 1e-6}
    result = measure_stamps(image, variance, x, y, 41, **options)
    assert_matches_scalar(result, image, variance, x, y, **options)
    assert result.shift.any() and not result.shift.all()
    limited = measure_stamps(image, variance, x, y, 41, max_iter=5)
    assert measure_stamps(image, variance, x, y, 41).fallback.size + 20 < limited.fallback.size < len(x) - 20
    assert_matches_scalar(limited, image, variance, x, y, max_iter=5)


def test_mask_and_bad_input() -> None:
    image, variance, x, y = synthetic_field(5)
    half = 20
    flat_index, inside = stamp_indices(image.shape, x, y, half)
    stamps = np.ravel(image).take(flat_index)  # border pixels repeated outside the image: must be ignored
    xc, yc = x - nearest_pixel(x) + half, y - nearest_pixel(y) + half
    result = adaptive_moments_stamps(stamps, inside, xc, yc, variance[nearest_pixel(y), nearest_pixel(x)])
    assert_matches_scalar(result, image, variance, x, y)
    with pytest.raises(ValueError, match="stamps"):
        adaptive_moments_stamps(stamps[:, :, 1:], inside[:, :, 1:], xc, yc, np.ones(len(x)))

