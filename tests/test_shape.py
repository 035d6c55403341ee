"""Tests of shape.sdss adaptive moments on synthetic elliptical Gaussians of known moments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table
from scipy.optimize import brentq

from processccd.meas import shape as shape_module
from processccd.meas.shape import adaptive_moments, psf_adaptive_sigma
from reference_impl.psf import GaussianPsf


def elliptical_gaussian(
    size: tuple[int, int], x: float, y: float, ixx: float, ixy: float, iyy: float, flux: float
) -> np.ndarray:
    """A Gaussian of total flux `flux` and moments (ixx, ixy, iyy) sampled at the pixel centres."""
    yy, xx = np.mgrid[: size[0], : size[1]].astype(np.float64)
    dx, dy = xx - x, yy - y
    det = ixx * iyy - ixy * ixy
    exponent = (iyy * dx * dx - 2.0 * ixy * dx * dy + ixx * dy * dy) / det
    return flux / (2.0 * np.pi * np.sqrt(det)) * np.exp(-0.5 * exponent)


@pytest.mark.parametrize(
    ("ixx", "ixy", "iyy"), [(2.0, 0.0, 2.0), (3.0, 0.8, 2.0), (1.8, -0.4, 2.5), (6.0, 2.5, 4.0)]
)
def test_noiseless_gaussian_recovers_moments(ixx: float, ixy: float, iyy: float) -> None:
    x, y = 31.3, 30.7
    image = elliptical_gaussian((64, 64), x, y, ixx, ixy, iyy, 1e4)
    variance = np.ones_like(image)
    result = adaptive_moments(image, variance, x, y)
    assert not result.flag
    # the default tolerances stop when Mxx changes by < 1e-4 per step: W lags by up to a few 1e-4
    np.testing.assert_allclose([result.ixx, result.ixy, result.iyy], [ixx, ixy, iyy], atol=5e-4 * ixx)
    tight = adaptive_moments(image, variance, x, y, tol1=1e-9, tol2=1e-9)
    np.testing.assert_allclose([tight.ixx, tight.ixy, tight.iyy], [ixx, ixy, iyy], atol=1e-4 * ixx)
    peak = 1e4 / (2.0 * np.pi * np.sqrt(ixx * iyy - ixy * ixy))
    assert tight.i0 == pytest.approx(peak, rel=1e-4)
    assert result.i0 == pytest.approx(peak, rel=5e-4)
    assert np.all(np.isfinite([result.err_ixx, result.err_ixy, result.err_iyy]))


def test_pixel_sampling_bias_of_narrow_sources() -> None:
    """A Gaussian of sigma 1 px sampled at pixel centres comes out ~0.4% narrow (aliasing of the
    weighted product, sigma/sqrt(2) = 0.7 px); from sigma 1.3 px on the bias is below 1e-4."""
    assert psf_adaptive_sigma(GaussianPsf(1.0).compute_image(0.0, 0.0)) == pytest.approx(0.9979, abs=1e-4)


def test_errors_map_covariance_slots_and_scale_with_variance() -> None:
    x, y = 24.0, 24.0
    image = elliptical_gaussian((48, 48), x, y, 2.5, 0.6, 1.8, 5e3)
    low = adaptive_moments(image, np.full_like(image, 4.0), x, y)
    high = adaptive_moments(image, np.full_like(image, 16.0), x, y)
    assert (low.err_ixx, low.err_iyy, low.err_ixy) == (
        low.covariance[1, 1],
        low.covariance[2, 2],
        low.covariance[3, 3],
    )
    np.testing.assert_allclose(high.covariance, 4.0 * low.covariance, rtol=1e-12)
    assert low.err_ixx > low.err_iyy  # the larger axis is the less certain


def test_pulls_have_unit_width_on_background_noise() -> None:
    """Constant (sky-dominated) noise: the Fisher errors are those of the least-squares Gaussian fit.

    With the source's own photon noise the centre-pixel variance overestimates the noise of the wings
    and the errors are too large (pulls ~0.6 at peak/sky ~ 20): that regime is deliberately not used.
    """
    rng = np.random.default_rng(12345)
    x, y, sky_variance = 24.3, 23.8, 100.0
    truth = elliptical_gaussian((48, 48), x, y, 2.0, 0.5, 1.5, 4000.0)  # S/N ~ 60
    variance = np.full_like(truth, sky_variance)
    reference = adaptive_moments(truth, variance, x, y)
    pulls = []
    for _ in range(300):
        result = adaptive_moments(truth + rng.normal(0.0, np.sqrt(sky_variance), truth.shape), variance, x, y)
        assert not result.flag
        pulls.append(
            [
                (result.ixx - reference.ixx) / np.sqrt(result.err_ixx),
                (result.iyy - reference.iyy) / np.sqrt(result.err_iyy),
                (result.ixy - reference.ixy) / np.sqrt(result.err_ixy),
            ]
        )
    widths = np.std(pulls, axis=0)
    means = np.mean(pulls, axis=0)
    assert np.all(np.abs(widths - 1.0) < 0.2), widths
    assert np.all(np.abs(means) < 0.25), means


def test_noisy_moments_within_errors() -> None:
    rng = np.random.default_rng(7)
    x, y = 20.6, 21.2
    truth = elliptical_gaussian((42, 42), x, y, 2.2, -0.7, 3.1, 2e4)
    image = truth + rng.normal(0.0, 5.0, truth.shape)
    result = adaptive_moments(image, np.full_like(image, 25.0), x, y)
    assert not result.flag
    for measured, true, variance in [
        (result.ixx, 2.2, result.err_ixx),
        (result.ixy, -0.7, result.err_ixy),
        (result.iyy, 3.1, result.err_iyy),
    ]:
        assert abs(measured - true) < 4.0 * np.sqrt(variance)


def delta_fixed_point() -> float:
    """Circular W at which a single pixel, sub-sampled 4x4 at +-0.125, +-0.375, is a fixed point (M = W/2)."""
    ox, oy = np.meshgrid(shape_module.SUBSAMPLE_OFFSETS, shape_module.SUBSAMPLE_OFFSETS)

    def weighted_moment(w: float) -> float:
        weight = np.exp(-0.5 * (ox**2 + oy**2) / w)
        return float((weight * ox**2).sum() / weight.sum())

    return brentq(lambda w: weighted_moment(w) - w / 2.0, 0.01, 1.0, xtol=1e-12)


def test_small_sources_use_subsampling(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []
    original = shape_module._weighted_sums

    def recording(*args: object, **kwargs: object) -> object:
        calls.append(bool(args[-1]))
        return original(*args, **kwargs)

    monkeypatch.setattr(shape_module, "_weighted_sums", recording)
    image = elliptical_gaussian((41, 41), 20.0, 20.0, 0.25, 0.0, 0.25, 1e3)
    result = shape_module._adaptive_moments_numpy(image, np.ones_like(image), 20.0, 20.0)
    assert any(calls) and not all(calls)
    assert not result.flag
    compiled = adaptive_moments(image, np.ones_like(image), 20.0, 20.0)  # the same sub-sampling, compiled
    np.testing.assert_allclose([compiled.ixx, compiled.ixy, compiled.iyy, compiled.i0],
                               [result.ixx, result.ixy, result.iyy, result.i0], rtol=1e-12, atol=1e-15)
    # the source is ~one pixel: the iteration ends on the single-pixel fixed point of the sub-sample grid,
    # and each sub-sample carries the full pixel value (no 1/16), so S = I_centre * sum of the 16 weights
    fixed_w = delta_fixed_point()
    assert result.ixx == pytest.approx(fixed_w, rel=1e-4)
    assert result.iyy == pytest.approx(fixed_w, rel=1e-4)
    assert abs(result.ixy) < 1e-8
    ox, oy = np.meshgrid(shape_module.SUBSAMPLE_OFFSETS, shape_module.SUBSAMPLE_OFFSETS)
    weights = np.exp(-0.5 * (ox**2 + oy**2) / result.ixx)
    assert result.sum_flux == pytest.approx(image[20, 20] * weights.sum(), rel=1e-4)


def test_negative_source_falls_back_to_unweighted_bad() -> None:
    image = -elliptical_gaussian((40, 40), 20.0, 20.0, 2.0, 0.0, 2.0, 1e4)
    result = adaptive_moments(image, np.ones_like(image), 20.0, 20.0)
    assert result.unweighted and result.unweighted_bad and result.flag
    assert np.isnan(result.ixx) and np.isnan(result.iyy)  # S <= 0: NaN moments
    assert np.isnan(result.err_ixx)


def test_unweighted_bad_with_positive_sum_reports_one_pixel_moments() -> None:
    image = np.zeros((41, 41))
    image[20, 20] = 1000.0  # a delta at the centre: every weighted and unweighted second moment is 0
    result = adaptive_moments(image, np.ones_like(image), 20.0, 20.0)
    assert result.unweighted_bad
    assert (result.ixx, result.ixy, result.iyy) == (1.0 / 12.0, 0.0, 1.0 / 12.0)


def test_source_beyond_the_edge_sets_shift() -> None:
    """A star centred 3 px beyond the left edge measured at its true centre: the clipped box pulls the
    weighted centroid inwards by more than shiftmax."""
    image = elliptical_gaussian((40, 40), -3.0, 20.0, 2.0, 0.0, 2.0, 1e4)
    result = adaptive_moments(image, np.ones_like(image), -3.0, 20.0)
    assert result.flag
    assert result.shift or result.unweighted
    centred = adaptive_moments(
        elliptical_gaussian((40, 40), 20.0, 20.0, 2.0, 0.0, 2.0, 1e4), np.ones((40, 40)), 20.0, 20.0
    )
    assert not centred.flag


def test_maxiter_flag() -> None:
    image = elliptical_gaussian((48, 48), 24.0, 24.0, 3.0, 0.5, 2.0, 1e4)
    result = adaptive_moments(image, np.ones_like(image), 24.0, 24.0, max_iter=2)
    assert result.maxiter and result.unweighted and not result.unweighted_bad
    assert np.isnan(result.err_ixx)
    assert result.ixx > 0 and result.iyy > 0  # unweighted moments in the last box


def test_box_limits_truncate_and_clip() -> None:
    # rad = 4 sqrt(1.5) + 0.5 = 5.399: int(10.2 - 5.399) = 4, int(10.2 + 5.399) = 15
    assert shape_module._moment_box((100, 100), 10.2, 10.7, 1.5, 1.5) == (4, 15, 5, 16)
    assert shape_module._moment_box((12, 14), 1.0, 10.0, 1.5, 1.5) == (0, 6, 4, 11)


def test_psf_adaptive_sigma_of_gaussian_psf() -> None:
    for sigma in (1.3, 1.6, 2.0):
        assert psf_adaptive_sigma(GaussianPsf(sigma).compute_image(100.0, 100.0)) == pytest.approx(
            sigma, rel=1e-4
        )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("run", "sigmas"),
    [
        (4192, {"u": 1.39, "g": 1.29, "r": 1.10, "i": 1.06, "z": 1.15}),
        (6377, {"u": 1.25, "g": 1.26, "r": 1.04, "i": 1.02, "z": 1.17}),
    ],
)
def test_sdss_psf_sigmas_match_the_2013_log(demo_dir: Path, run: int, sigmas: dict[str, float]) -> None:
    from processccd.psf import SdssKLPsf, adaptive_gaussian_width

    (path,) = sorted(demo_dir.glob(f"input/{run}/*/objcs/*/psField-*.fit"))
    for band, expected in sigmas.items():
        psf = SdssKLPsf.from_file(path, band)
        image = psf.compute_image(1024.0, 680.0)
        assert psf_adaptive_sigma(image) == pytest.approx(expected, abs=0.01)
        assert adaptive_gaussian_width(image) == pytest.approx(expected, abs=0.01)  # what detection smooths with


def test_large_box_row_chunks_match_the_flat_sums() -> None:
    rng = np.random.default_rng(3)
    image = rng.normal(5.0, 1.0, (130, 150))
    stamp = shape_module._Stamp(image, 70.3, 60.8, (2, 140, 1, 125))
    assert stamp.pixels.size > shape_module.FLAT_LIMIT
    weights = (1.0 / 900.0, 1e-4, 1.0 / 400.0)
    chunked = shape_module._row_chunk_sums(stamp, *weights)
    flat = shape_module._flat_sums(stamp, *weights)
    np.testing.assert_allclose(
        [chunked.s, chunked.sx, chunked.sy, chunked.sxx, chunked.sxy, chunked.syy],
        [flat.s, flat.sx, flat.sy, flat.sxx, flat.sxy, flat.syy],
        rtol=1e-10,
    )


def test_shiftmax_only_sets_the_flag() -> None:
    image = elliptical_gaussian((40, 40), 1.0, 20.0, 2.0, 0.0, 2.0, 1e4)  # clipped at the left edge
    tight = adaptive_moments(image, np.ones_like(image), -1.0, 20.0, shiftmax=1.0)
    loose = adaptive_moments(image, np.ones_like(image), -1.0, 20.0, shiftmax=10.0)
    assert tight.shift and not loose.shift
    assert 1.0 < tight.max_shift == loose.max_shift < 10.0
    assert (tight.ixx, tight.iyy, tight.i0) == (loose.ixx, loose.iyy, loose.i0)


def bright_isolated_stars(
    demo_dir: Path, run: int, band: str, band_index: int, gain: float
) -> tuple[np.ndarray, np.ndarray, Table]:
    """(image, variance, expected rows) of one frame: the fpC minus a coarse sep background (the
    pipeline's E3 background differs slightly), variance = (fpC - 1000) / gain, and the expected rows of
    bright (S/N > 100) isolated (> 20 px) unflagged point sources."""
    import sep
    from astropy.io import ascii, fits

    (path,) = sorted(demo_dir.glob(f"input/{run}/*/corr/*/fpC-{run:06d}-{band}*.fit.gz"))
    camcol, field = int(path.parent.name), int(path.name[-11:-7])
    raw = fits.getdata(path).astype(np.float32)[:1361] - 1000.0
    variance = raw / gain
    image = raw - sep.Background(np.ascontiguousarray(raw), bw=512, bh=512).back()

    table = ascii.read(demo_dir / "detected-sources.txt.expected", format="commented_header")
    frame = ((run * 10 + band_index) * 10 + camcol) * 10000 + field
    rows = table[(np.asarray(table["id"], dtype=np.int64) >> 26) == frame]
    x, y = np.asarray(rows["centroid.sdss.x"]), np.asarray(rows["centroid.sdss.y"])
    distance = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
    np.fill_diagonal(distance, np.inf)
    keep = (
        (np.asarray(rows["classification.extendedness"]) == 0.0)
        & (np.asarray(rows["flux.psf"]) > 100.0 * np.asarray(rows["flux.psf.err"]))
        & (distance.min(axis=1) > 20.0)
    )
    for column in ("flags.badcentroid", "flags.pixel.interpolated.any", "flags.pixel.saturated.any",
                   "shape.sdss.flags"):
        keep &= np.asarray(rows[column]).astype(str) == "False"
    return image, variance, rows[keep]


REAL_FRAMES = [(4192, "r", 2, 4.76), (6377, "i", 3, 4.885)]


@pytest.mark.slow
@pytest.mark.parametrize(("run", "band", "band_index", "gain"), REAL_FRAMES)
def test_bright_isolated_stars_match_the_expected_moments(
    demo_dir: Path, run: int, band: str, band_index: int, gain: float
) -> None:
    """Moments and their errors of bright isolated stars agree with the 2013 values to a few 1e-3."""
    image, variance, rows = bright_isolated_stars(demo_dir, run, band, band_index, gain)
    assert len(rows) >= 20
    ratios = []
    for row in rows:
        result = adaptive_moments(image, variance, row["centroid.sdss.x"], row["centroid.sdss.y"])
        ratios.append(
            [
                result.ixx / row["shape.sdss.ixx"],
                result.iyy / row["shape.sdss.iyy"],
                result.err_ixx / row["shape.sdss.err.ixx"],
            ]
        )
    np.testing.assert_allclose(np.median(ratios, axis=0), 1.0, atol=3e-3)


@pytest.mark.parametrize(
    ("moments", "size"),
    [
        ((1600.0, 500.0, 900.0), 400),  # a large rotated galaxy: boxes of > 64 rows (the cross factors restart)
        ((100.0, 99.0, 100.0), 120),  # nearly degenerate along the diagonal: one exp per pixel
        ((2.0, 0.3, 1.5), 40),  # a star
    ],
)
def test_compiled_iteration_equals_numpy_reference(moments: tuple[float, float, float], size: int) -> None:
    rng = np.random.default_rng(int(moments[0]))
    x, y = size / 2 + 0.3, size / 2 - 0.2
    image = elliptical_gaussian((size, size), x, y, *moments, 1e6) + rng.normal(0.0, 0.1, (size, size))
    variance = np.full_like(image, 0.01)
    for options in ({}, {"max_iter": 3}, {"tol1": 1e-8, "tol2": 1e-8}):
        compiled = adaptive_moments(image, variance, x, y, **options)
        reference = shape_module._adaptive_moments_numpy(image, variance, x, y, **options)
        assert (compiled.flag, compiled.maxiter, compiled.unweighted) == (reference.flag, reference.maxiter,
                                                                          reference.unweighted)
        np.testing.assert_allclose([compiled.ixx, compiled.ixy, compiled.iyy, compiled.i0, compiled.sum_flux],
                                   [reference.ixx, reference.ixy, reference.iyy, reference.i0, reference.sum_flux],
                                   rtol=1e-10)
        np.testing.assert_allclose(compiled.covariance, reference.covariance, rtol=1e-9, atol=1e-12)


def test_compiled_iteration_of_pure_noise_grows_to_the_box_limit_as_numpy() -> None:
    """Noise makes the weight grow until the iteration fails, with boxes up to the image size."""
    image = np.random.default_rng(8).normal(0.0, 1.0, (700, 900)).astype(np.float32)
    variance = np.ones_like(image)
    for x, y in ((450.2, 350.7), (3.0, 690.4), (600.6, 100.1)):
        compiled = adaptive_moments(image, variance, x, y)
        reference = shape_module._adaptive_moments_numpy(image, variance, x, y)
        assert (compiled.unweighted, compiled.unweighted_bad, compiled.maxiter, compiled.shift) == (
            reference.unweighted, reference.unweighted_bad, reference.maxiter, reference.shift)
        np.testing.assert_allclose([compiled.ixx, compiled.ixy, compiled.iyy, compiled.i0, compiled.sum_flux],
                                   [reference.ixx, reference.ixy, reference.iyy, reference.i0, reference.sum_flux],
                                   rtol=1e-9, atol=1e-12)
