"""gaussian_centroid_sources (compiled, all sources of one image) equals the scalar gaussian_centroid source by
source (x0, y0 to 1e-9 px + 1e-11 relative, flags equal), and sdss_centroid_sources equals the per-source
sdss_centroid bit for bit, also with each source's own footprint put back into a noised image."""

from __future__ import annotations

import math

import numpy as np
import pytest

from processccd.meas.centroid import (
    LOST_DISTANCE,
    _unit_sum_kernels,
    gaussian_centroid,
    gaussian_centroid_sources,
    sdss_centroid_sources,
)
from processccd.meas.noise_replacement import NoiseReplacer
from processccd.psf import SdssKLPsf
from processccd.sdss.psfield import KLComponent
from reference_impl.centroid import sdss_centroid
from reference_impl.psf import normalized_kernel

TOLERANCE = 1e-9
RELATIVE_TOLERANCE = 1e-11  # fits that ran far off the image (|x0| ~ 1e4..1e5) differ in the last digits
SHAPE = (300, 420)


def star_field(seed: int, n_stars: int, shape: tuple[int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian stars of widths 0.7–5 px and peaks 2–30000 on sky 100 ± 5; start positions off by ~0.5 px."""
    rng = np.random.default_rng(seed)
    height, width = shape
    image = rng.normal(100.0, 5.0, size=shape)
    x_true = rng.uniform(-2.0, width + 1.0, n_stars)
    y_true = rng.uniform(-2.0, height + 1.0, n_stars)
    peaks = 10.0 ** rng.uniform(0.3, 4.5, n_stars)
    sigmas = rng.uniform(0.7, 5.0, n_stars)
    yy, xx = np.mgrid[:height, :width]
    for x, y, peak, sigma in zip(x_true, y_true, peaks, sigmas, strict=True):
        region = (slice(max(int(y) - 25, 0), max(int(y) + 26, 0)), slice(max(int(x) - 25, 0), max(int(x) + 26, 0)))
        r2 = (xx[region] - x) ** 2 + (yy[region] - y) ** 2
        image[region] += peak * np.exp(-0.5 * r2 / sigma**2)
    return image, x_true + rng.normal(0.0, 0.5, n_stars), y_true + rng.normal(0.0, 0.5, n_stars)


def assert_equals_scalar(
    image: np.ndarray, x: np.ndarray, y: np.ndarray, result: tuple[np.ndarray, ...],
    replacer: NoiseReplacer | None = None,
) -> list[tuple[float, float, bool]]:
    """Every source not in the fallback has the scalar result (on the image with its own footprint inserted);
    returns the scalar results."""
    x0, y0, flag, fallback = result
    scalar = []
    for index in range(len(x)):
        if index in fallback:
            assert np.isnan(x0[index]) and flag[index], index
            continue
        if replacer is not None:
            replacer.insert(index)
        sx, sy, sflag = gaussian_centroid(image, float(x[index]), float(y[index]))
        if replacer is not None:
            replacer.remove(index)
        scalar.append((sx, sy, sflag))
        assert flag[index] == sflag, index
        if math.isnan(sx):
            assert math.isnan(x0[index]) and math.isnan(y0[index]), index
        else:
            assert abs(x0[index] - sx) <= TOLERANCE + RELATIVE_TOLERANCE * abs(sx), index
            assert abs(y0[index] - sy) <= TOLERANCE + RELATIVE_TOLERANCE * abs(sy), index
    return scalar


def test_sources_equal_scalar_on_a_star_field() -> None:
    image, x, y = star_field(1, 300)
    result = gaussian_centroid_sources(image, x, y)
    assert result[3].size == 0
    scalar = assert_equals_scalar(image, x, y, result)
    # the field covers the cases that matter: failed fits, fits that ran away, sources near the edges
    assert sum(flag for _, _, flag in scalar) >= 5
    moved = [math.hypot(sx - x[i], sy - y[i]) for i, (sx, sy, flag) in enumerate(scalar) if not flag]
    assert sum(d > LOST_DISTANCE for d in moved) >= 10
    near_edge = [i for i in range(len(x)) if min(x[i], y[i], SHAPE[1] - x[i], SHAPE[0] - y[i]) < 16
                 and not result[2][i]]
    assert len(near_edge) >= 10


def test_non_positive_peak_and_too_close_to_the_edge_give_nan() -> None:
    image = np.full((60, 70), 10.0)
    x = np.array([30.0, 1.2, 35.0, 68.0])
    y = np.array([30.0, 30.0, 58.6, 20.0])
    x0, y0, flag, fallback = gaussian_centroid_sources(image, x, y)
    assert fallback.size == 0
    assert flag.all() and np.isnan(x0).all() and np.isnan(y0).all()
    assert all(gaussian_centroid(image, xi, yi)[2] for xi, yi in zip(x, y, strict=True))


def test_own_footprints_are_put_back_into_the_noised_image() -> None:
    image, x, y = star_field(2, 120)
    image = image.astype(np.float32)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    near = np.hypot(xx[None] - x[:, None, None], yy[None] - y[:, None, None]) < 3.0
    owner = np.where(near.any(axis=0), np.argmax(near, axis=0), -1)  # disjoint footprints
    ys, xs = np.nonzero(owner >= 0)
    replacer = NoiseReplacer(image, owner[ys, xs], ys, xs, seed=2, n_footprints=len(x))
    noised = image.copy()
    result = gaussian_centroid_sources(image, x, y, replacer.footprint_deltas())
    assert np.array_equal(image, noised)  # every footprint is noise again
    assert_equals_scalar(image, x, y, result, replacer)
    alone = gaussian_centroid_sources(image, x, y)  # the source's own pixels matter
    assert not np.allclose(alone[0], result[0], equal_nan=True)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_non_finite_centres_and_pixels_fall_back() -> None:
    image, x, y = star_field(5, 200)
    x = np.r_[x, np.nan, 200.0]
    y = np.r_[y, 10.0, 150.0]
    image[150, 205] = np.nan
    result = gaussian_centroid_sources(image, x, y)
    assert {len(x) - 2, len(x) - 1} <= set(result[3].tolist())
    finite = np.isfinite(x)
    assert_equals_scalar(image, x[finite], y[finite], tuple(v[finite] for v in result[:3]) + (
        np.flatnonzero(np.isin(np.flatnonzero(finite), result[3])),))


# ---------------------------------------------------------------------------------------------------------
# centroid.sdss: sdss_centroid_sources equals sdss_centroid bit for bit
# ---------------------------------------------------------------------------------------------------------


def varying_psf() -> SdssKLPsf:
    """A KL PSF whose width and ellipticity change across the frame (two Gaussian components)."""
    yy, xx = np.mgrid[:51, :51] - 25.0
    core = np.exp(-0.5 * (xx**2 + yy**2) / 1.3**2)
    wings = np.exp(-0.5 * (xx**2 / 2.2**2 + yy**2 / 1.8**2))
    return SdssKLPsf([KLComponent(np.array([[1.0, 0.3], [-0.5, 0.0]]), core),
                      KLComponent(np.array([[0.2, 0.1], [0.4, 0.0]]), wings)])


EXTENDED = np.array([[90.3, 80.6], [300.2, 150.7], [200.5, 230.1]])  # (x, y) of objects that need binning


def sdss_star_field(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """float32 image and variance of `star_field` stars and of the wide EXTENDED objects, and their peak
    pixels (EXTENDED last but three), then three peaks off the image."""
    image, x, y = star_field(seed, 150)
    image -= 100.0
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    for x_centre, y_centre in EXTENDED:
        image += 3e3 * np.exp(-0.5 * ((xx - x_centre) ** 2 + (yy - y_centre) ** 2) / 4.5**2)
    variance = np.full(SHAPE, 25.0, dtype=np.float32)
    x_peak = np.floor(np.r_[x, EXTENDED[:, 0]] + 0.5).astype(np.int64)
    y_peak = np.floor(np.r_[y, EXTENDED[:, 1]] + 0.5).astype(np.int64)
    return image.astype(np.float32), variance, np.r_[x_peak, -1, SHAPE[1], 30], np.r_[y_peak, 30, 40, SHAPE[0]]


def assert_sdss_equals_scalar(image: np.ndarray, variance: np.ndarray, x_peak: np.ndarray, y_peak: np.ndarray,
                              psf: SdssKLPsf, psf_sigma: np.ndarray, result: tuple[np.ndarray, ...],
                              replacer: NoiseReplacer | None = None) -> list[bool]:
    """Every source has the scalar result bit for bit (on the image with its own footprint inserted); returns
    the scalar flags."""
    flags = []
    for index in range(x_peak.size):
        if replacer is not None:
            replacer.insert(index)
        scalar = sdss_centroid(image, variance, x_peak[index], y_peak[index], psf, psf_sigma[index])
        if replacer is not None:
            replacer.remove(index)
        batch = tuple(float(values[index]) for values in result[:4]) + (bool(result[4][index]),)
        expected = (scalar.x, scalar.y, scalar.err_xx, scalar.err_yy, scalar.flag)
        assert np.array_equal(batch, expected, equal_nan=True), index
        flags.append(scalar.flag)
    return flags


def test_unit_sum_kernels_are_the_normalized_kernels() -> None:
    psf = varying_psf()
    rng = np.random.default_rng(3)
    x_peak, y_peak = rng.integers(0, 2048, 300), rng.integers(0, 1489, 300)
    kernels, neffs = _unit_sum_kernels(psf, x_peak, y_peak)
    for kernel, neff, x, y in zip(kernels, neffs, x_peak, y_peak, strict=True):
        expected = normalized_kernel(psf, int(x), int(y))
        assert np.array_equal(kernel, expected)
        assert neff == expected.sum() ** 2 / (expected * expected).sum()


def test_sdss_sources_equal_scalar_on_a_star_field() -> None:
    image, variance, x_peak, y_peak = sdss_star_field(4)
    psf = varying_psf()
    psf_sigma = np.random.default_rng(4).uniform(1.0, 2.0, x_peak.size)
    result = sdss_centroid_sources(image, variance, x_peak, y_peak, psf, psf_sigma)
    flags = assert_sdss_equals_scalar(image, variance, x_peak, y_peak, psf, psf_sigma, result)
    # the field covers failures (edges, no maximum) and successes, binned ones among them
    assert sum(flags) >= 10 and len(flags) - sum(flags) >= 30
    assert result[4][-3:].all()
    assert not all(flags[-6:-3])  # an EXTENDED object measured on a binned stamp


def test_sdss_sources_put_back_their_own_footprints() -> None:
    image, variance, x_peak, y_peak = sdss_star_field(6)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    near = np.hypot(xx[None] - x_peak[:, None, None], yy[None] - y_peak[:, None, None]) < 4.0
    owner = np.where(near.any(axis=0), np.argmax(near, axis=0), -1)  # disjoint footprints
    ys, xs = np.nonzero(owner >= 0)
    replacer = NoiseReplacer(image, owner[ys, xs], ys, xs, seed=6, n_footprints=x_peak.size)
    noised = image.copy()
    psf, psf_sigma = varying_psf(), np.full(x_peak.size, 1.4)
    result = sdss_centroid_sources(image, variance, x_peak, y_peak, psf, psf_sigma, replacer.footprint_deltas())
    assert np.array_equal(image, noised)  # every footprint is noise again
    assert_sdss_equals_scalar(image, variance, x_peak, y_peak, psf, psf_sigma, result, replacer)
    alone = sdss_centroid_sources(image, variance, x_peak, y_peak, psf, psf_sigma)  # the source's own pixels matter
    assert not np.allclose(alone[0], result[0])


def test_sdss_sources_without_sources_or_with_a_bad_width() -> None:
    image, variance, x_peak, y_peak = sdss_star_field(7)
    empty = np.zeros(0, dtype=np.int64)
    assert all(values.size == 0 for values in sdss_centroid_sources(image, variance, empty, empty, varying_psf(),
                                                                    np.zeros(0)))
    with pytest.raises(ValueError, match="positive"):
        sdss_centroid_sources(image, variance, x_peak[:3], y_peak[:3], varying_psf(), np.array([1.4, 0.0, 1.4]))
