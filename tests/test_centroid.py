"""Tests of centroid.sdss and centroid.gaussian on synthetic stars of known centre, and on the demo data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from processccd.meas.centroid import gaussian_centroid
from reference_impl.centroid import sdss_centroid
from reference_impl.psf import GaussianPsf

HEIGHT, WIDTH = 80, 90
SKY = 150.0  # DN, already subtracted from the image but present in the variance
GAIN = 4.0


def gaussian_star(x0: float, y0: float, flux: float, sigma: float, shape=(HEIGHT, WIDTH)) -> np.ndarray:
    """A circular Gaussian of total `flux` centred on (x0, y0), sampled at pixel centres."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return flux / (2 * np.pi * sigma**2) * np.exp(-0.5 * ((xx - x0) ** 2 + (yy - y0) ** 2) / sigma**2)


def variance_of(model: np.ndarray) -> np.ndarray:
    return ((model + SKY) / GAIN).astype(np.float32)


@pytest.mark.parametrize("sigma", [1.2, 1.4, 1.6])
@pytest.mark.parametrize("offset", [(0.0, 0.0), (0.31, -0.22), (-0.45, 0.4), (0.49, 0.12)])
def test_sdss_centroid_noiseless_star(sigma: float, offset: tuple[float, float]) -> None:
    x_true, y_true = 45 + offset[0], 40 + offset[1]
    model = gaussian_star(x_true, y_true, 5e4, sigma)
    result = sdss_centroid(model.astype(np.float32), variance_of(model), 45, 40, GaussianPsf(sigma), sigma)
    assert not result.flag
    # The SDSS estimator has a small intrinsic bias (quartic approximation), far below the noise.
    assert abs(result.x - x_true) < 0.01
    assert abs(result.y - y_true) < 0.01
    assert result.err_xx > 0 and result.err_yy > 0
    if offset == (0.0, 0.0):
        assert result.x == pytest.approx(45.0, abs=1e-9) and result.y == pytest.approx(40.0, abs=1e-9)


def test_sdss_centroid_axes_are_not_swapped() -> None:
    model = gaussian_star(45.3, 39.8, 5e4, 1.4)
    result = sdss_centroid(model.astype(np.float32), variance_of(model), 45, 40, GaussianPsf(1.4), 1.4)
    assert result.x > 45.2 and result.y < 39.9


@pytest.mark.parametrize("sigma", [1.2, 1.6])
def test_sdss_centroid_pulls(sigma: float) -> None:
    """The 2013 error formula is conservative: pulls (x − x_true)/σx have a width of 0.72–0.85 here.

    (The formula reproduces the pipeline's errors to 0.1% on the demo data, so it is kept as is.)
    """
    rng = np.random.default_rng(12345)
    x_true, y_true = 45.23, 39.87
    model = gaussian_star(x_true, y_true, 1500.0, sigma)
    variance = variance_of(model)
    psf = GaussianPsf(sigma)
    offsets, errors = [], []
    for _ in range(300):
        noisy = (model + rng.normal(0.0, np.sqrt(variance))).astype(np.float32)
        result = sdss_centroid(noisy, variance, 45, 40, psf, sigma)
        assert not result.flag
        offsets.append((result.x - x_true, result.y - y_true))
        errors.append((math.sqrt(result.err_xx), math.sqrt(result.err_yy)))
    offsets, errors = np.array(offsets), np.array(errors)
    pull_widths = (offsets / errors).std(axis=0)
    assert np.all((pull_widths > 0.7) & (pull_widths < 1.0))
    # the estimator's bias is much smaller than the per-source error
    assert np.all(np.abs(offsets.mean(axis=0)) < 0.2 * np.median(errors, axis=0))


@pytest.mark.parametrize(("x_peak", "y_peak"), [(16, 40), (45, 16), (WIDTH - 17, 40), (45, HEIGHT - 17), (-3, 40)])
def test_sdss_centroid_flags_sources_near_the_edge(x_peak: int, y_peak: int) -> None:
    model = gaussian_star(x_peak + 0.2, y_peak - 0.1, 5e4, 1.4)
    result = sdss_centroid(model.astype(np.float32), variance_of(model), x_peak, y_peak, GaussianPsf(1.4), 1.4)
    assert result.flag
    assert (result.x, result.y) == (x_peak, y_peak)
    assert math.isnan(result.err_xx) and math.isnan(result.err_yy)


@pytest.mark.parametrize(("x_peak", "y_peak"), [(17, 40), (45, 17), (WIDTH - 18, 40), (45, HEIGHT - 18)])
def test_sdss_centroid_just_inside_the_edge_limit(x_peak: int, y_peak: int) -> None:
    model = gaussian_star(x_peak + 0.2, y_peak - 0.1, 5e4, 1.4)
    result = sdss_centroid(model.astype(np.float32), variance_of(model), x_peak, y_peak, GaussianPsf(1.4), 1.4)
    assert not result.flag
    assert abs(result.x - (x_peak + 0.2)) < 0.01 and abs(result.y - (y_peak - 0.1)) < 0.01


def test_sdss_centroid_flags_a_non_maximum() -> None:
    model = gaussian_star(45.0, 40.0, 5e4, 1.4)
    # Start 3 px away from the star: the smoothed image has no maximum at the start pixel.
    result = sdss_centroid(model.astype(np.float32), variance_of(model), 48, 40, GaussianPsf(1.4), 1.4)
    assert result.flag and math.isnan(result.err_xx)


def test_sdss_centroid_bins_extended_objects() -> None:
    shape = (200, 220)
    model = gaussian_star(110.3, 99.6, 2e6, 4.5, shape)
    variance = variance_of(model)
    result = sdss_centroid(model.astype(np.float32), variance, 110, 100, GaussianPsf(1.3), 1.3)
    assert not result.flag
    assert abs(result.x - 110.3) < 0.1 and abs(result.y - 99.6) < 0.1
    # The same object 30 px from the edge: the 2x2-binned stamp (70 px) leaves the image.
    model_near = gaussian_star(110.3, 29.6, 2e6, 4.5, shape)
    near = sdss_centroid(model_near.astype(np.float32), variance_of(model_near), 110, 30, GaussianPsf(1.3), 1.3)
    assert near.flag
    # A star at that position needs no binning and succeeds.
    star = gaussian_star(110.3, 29.6, 5e4, 1.3, shape)
    assert not sdss_centroid(star.astype(np.float32), variance_of(star), 110, 30, GaussianPsf(1.3), 1.3).flag


@pytest.mark.parametrize("sigma", [1.2, 1.5, 2.5])
@pytest.mark.parametrize("offset", [(0.0, 0.0), (0.37, -0.18), (-0.49, 0.44)])
def test_gaussian_centroid_recovers_a_noiseless_gaussian(sigma: float, offset: tuple[float, float]) -> None:
    x_true, y_true = 45 + offset[0], 40 + offset[1]
    image = (gaussian_star(x_true, y_true, 2e4, sigma) + 37.0).astype(np.float32)
    x, y, flag = gaussian_centroid(image, 45.2, 39.9)
    assert not flag
    assert abs(x - x_true) < 1e-3 and abs(y - y_true) < 1e-3


def test_gaussian_centroid_noisy_star_is_unbiased() -> None:
    rng = np.random.default_rng(7)
    x_true, y_true = 45.27, 40.41
    model = gaussian_star(x_true, y_true, 5000.0, 1.4)
    offsets = []
    for _ in range(100):
        noisy = (model + rng.normal(0.0, np.sqrt(variance_of(model)))).astype(np.float32)
        x, y, flag = gaussian_centroid(noisy, x_true, y_true)
        assert not flag
        offsets.append((x - x_true, y - y_true))
    offsets = np.array(offsets)
    assert np.all(np.abs(offsets.mean(axis=0)) < 0.02)
    assert np.all(offsets.std(axis=0) < 0.1)


def test_gaussian_centroid_fails_without_a_positive_peak() -> None:
    image = np.full((HEIGHT, WIDTH), 5.0, dtype=np.float32)
    x, y, flag = gaussian_centroid(image, 45.0, 40.0)
    assert flag and math.isnan(x) and math.isnan(y)


def test_gaussian_centroid_near_the_image_edge() -> None:
    image = (gaussian_star(5.3, 40.2, 2e4, 1.4) + 10.0).astype(np.float32)
    x, y, flag = gaussian_centroid(image, 5.0, 40.0)
    assert not flag and abs(x - 5.3) < 1e-3 and abs(y - 40.2) < 1e-3
    assert gaussian_centroid(image, 1.0, 40.0)[2]


# ---------------------------------------------------------------------------------------------------------
# Real data: frame 4192 r of the demo, compared with the 2013 pipeline's values.
# ---------------------------------------------------------------------------------------------------------


def _expected_rows(expected: Path, frame: int) -> tuple[dict[str, int], list[list[str]]]:
    with expected.open() as handle:
        columns = handle.readline()[1:].split()
        rows = [line.split() for line in handle if not line.startswith("#")]
    return {name: i for i, name in enumerate(columns)}, [r for r in rows if int(r[0]) >> 26 == frame]


@pytest.mark.slow
def test_centroids_match_the_2013_pipeline_on_bright_stars(demo_dir: Path) -> None:
    sep = pytest.importorskip("sep")
    from astropy.io import fits

    from processccd.meas.shape import psf_adaptive_sigma
    from processccd.psf import SdssKLPsf

    run, camcol, field, band, gain = 4192, 4, 300, "r", 4.76
    field_dir = demo_dir / "input" / str(run) / "40"
    raw = fits.getdata(field_dir / "corr" / str(camcol) / f"fpC-{run:06d}-{band}{camcol}-{field:04d}.fit.gz")
    raw = raw.astype(np.float32)[:1361] - np.float32(1000)
    variance = (raw / np.float32(gain)).astype(np.float32)
    image = (raw - sep.Background(np.ascontiguousarray(raw), bw=512, bh=512).back()).astype(np.float32)
    psf = SdssKLPsf.from_file(field_dir / "objcs" / str(camcol) / f"psField-{run:06d}-{camcol}-{field:04d}.fit", band)

    frame = ((run * 10 + "ugriz".index(band)) * 10 + camcol) * 10000 + field
    col, rows = _expected_rows(demo_dir / "detected-sources.txt.expected", frame)
    sdss_offsets, gauss_offsets, err_ratios = [], [], []
    for row in rows:

        def value(name: str, row: list[str] = row) -> float:
            return float(row[col[name]])

        bright = value("flux.psf") > 100 * value("flux.psf.err")
        clean = all(
            row[col[f]] == "False"
            for f in ("flags.badcentroid", "flags.pixel.interpolated.any", "flags.pixel.saturated.any")
        )
        if not (bright and clean and value("classification.extendedness") == 0.0):
            continue
        x_exp, y_exp = value("centroid.sdss.x"), value("centroid.sdss.y")
        x_peak, y_peak = math.floor(x_exp + 0.5), math.floor(y_exp + 0.5)
        sigma = psf_adaptive_sigma(psf.compute_image(x_peak, y_peak))
        result = sdss_centroid(image, variance, x_peak, y_peak, psf, sigma)
        assert not result.flag
        sdss_offsets.append(math.hypot(result.x - x_exp, result.y - y_exp))
        err_ratios.append(result.err_xx / value("centroid.sdss.err.xx"))
        gx, gy, gflag = gaussian_centroid(image, x_exp, y_exp)
        assert not gflag
        gauss_offsets.append(math.hypot(gx - value("centroid.gaussian.x"), gy - value("centroid.gaussian.y")))
    assert len(sdss_offsets) >= 10
    assert np.median(sdss_offsets) < 1e-4
    assert np.median(gauss_offsets) < 1e-4
    assert np.median(err_ratios) == pytest.approx(1.0, abs=0.01)
