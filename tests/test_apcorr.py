"""Aperture correction: the weighted quadratic fit, its error model, the task on synthetic stars, application."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from astropy.wcs import WCS

from processccd.dataid import DataId
from processccd.image import Exposure, PhotoCalib
from processccd.table import EXTRA_SCHEMA, SOURCE_SCHEMA, empty_columns
from processccd.tasks.apcorr import (
    ApCorrConfig,
    ApCorrStars,
    ApCorrTask,
    ApertureCorrection,
    apply_aperture_correction,
    bright_enough,
    chebyshev_terms,
    fit_aperture_correction,
    fit_chebyshev_clipped,
    image_bbox,
    polynomial_terms,
)
from reference_impl.psf import GaussianPsf

TRUE = np.array([0.99, 2e-6, -3e-6, 4e-9, -1e-9, 2e-9])  # 1, y, x, y², xy, x²


def _positions(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return rng.uniform(20, 2028, n), rng.uniform(20, 1340, n)


def test_terms_order_is_1_y_x_y2_xy_x2() -> None:
    terms = polynomial_terms(np.array([2.0]), np.array([3.0]), 2)
    np.testing.assert_array_equal(terms, [[1, 3, 2, 9, 6, 4]])


def test_noiseless_quadratic_is_recovered() -> None:
    rng = np.random.default_rng(1)
    x, y = _positions(15, rng)
    ratio = polynomial_terms(x, y, 2) @ TRUE
    order, coefficients, error = fit_aperture_correction(x, y, ratio, rng.uniform(0.005, 0.05, 15), 2)
    assert order == 2
    np.testing.assert_allclose(polynomial_terms(x, y, 2) @ coefficients, ratio, rtol=0, atol=1e-12)
    np.testing.assert_allclose(coefficients, TRUE, rtol=1e-6, atol=1e-15)
    assert error < 1e-12


def test_weights_are_inverse_sigma_to_the_fourth_and_error_uses_sigma_to_the_eighth() -> None:
    rng = np.random.default_rng(2)
    x, y = _positions(40, rng)
    sigma = rng.uniform(0.002, 0.05, 40)
    ratio = polynomial_terms(x, y, 2) @ TRUE + rng.normal(0, sigma)
    _, coefficients, error = fit_aperture_correction(x, y, ratio, sigma, 2)
    # normal equations with weights 1/σ⁴, solved in scaled coordinates for conditioning
    design = polynomial_terms(x / 1000, y / 1000, 2)
    weight = sigma**-4
    scaled = np.linalg.solve(design.T @ (weight[:, None] * design), design.T @ (weight * ratio))
    expected_model = design @ scaled
    np.testing.assert_allclose(polynomial_terms(x, y, 2) @ coefficients, expected_model, rtol=1e-10)
    residual = ratio - expected_model
    expected_error = np.sqrt(np.sum(sigma**-8 * residual**2) / np.sum(sigma**-8))
    assert error == pytest.approx(expected_error, rel=1e-8)
    # 1/σ² weights would give a measurably different fit
    plain = np.linalg.solve(design.T @ (sigma[:, None] ** -2 * design), design.T @ (sigma**-2 * ratio))
    assert np.max(np.abs(design @ plain - expected_model)) > 1e-5


def test_too_few_stars_lower_the_order_and_none_gives_one() -> None:
    x, y = np.array([100.0, 1500.0, 900.0]), np.array([200.0, 1000.0, 50.0])
    order, coefficients, _ = fit_aperture_correction(x, y, np.array([1.0, 1.01, 0.99]), np.full(3, 0.01), 2)
    assert order == 1 and len(coefficients) == 3
    assert fit_aperture_correction(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), 2) == (0, pytest.approx([1.0]),
                                                                                             0.0)


def _exposure_with_stars(positions: list[tuple[float, float]], flux: float, sigma: float = 1.5,
                         shape: tuple[int, int] = (300, 400)) -> Exposure:
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    image = np.zeros(shape)
    for x, y in positions:
        image += flux / (2 * np.pi * sigma**2) * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2))
    variance = np.full(shape, 4.0) + image / 4.0
    image += rng.normal(0, np.sqrt(variance))
    return Exposure(image=image.astype(np.float32), mask=np.zeros(shape, np.uint16),
                    variance=variance.astype(np.float32), wcs=WCS(naxis=2), psf=GaussianPsf(sigma),
                    photo_calib=PhotoCalib(1e10, 1e8), data_id=DataId(run=1, camcol=1, field=1, filter="r"))


STAR_POSITIONS = [(60.3, 50.7), (200.0, 60.2), (330.6, 70.1), (80.2, 150.5), (210.9, 160.4), (320.1, 240.8),
                  (70.5, 250.0), (190.4, 240.3)]


def _synthetic_star_frame(positions: list[tuple[float, float]]) -> tuple[Exposure, dict[str, np.ndarray]]:
    """Stars of flux 2e5 at `positions` and the catalogue columns the task reads (ids, centroids)."""
    exposure = _exposure_with_stars(positions, flux=2e5)
    columns = empty_columns(len(positions), SOURCE_SCHEMA + EXTRA_SCHEMA)
    columns["id"] = np.arange(1, len(positions) + 1)
    columns["centroid.sdss.x"] = np.array([p[0] for p in positions])
    columns["centroid.sdss.y"] = np.array([p[1] for p in positions])
    return exposure, columns


def test_task_on_synthetic_stars_gives_ratio_near_one_and_skips_interpolated() -> None:
    positions = STAR_POSITIONS
    exposure, columns = _synthetic_star_frame(positions)
    columns["flags.pixel.interpolated.center"][0] = True
    result = ApCorrTask().run(exposure, columns, np.arange(len(positions)))
    assert result.n_candidates == 8 and result.n_stars == 7
    assert 1 not in result.stars.ids
    np.testing.assert_allclose(result.stars.ratio, 1.0, atol=0.01)  # r=7 px holds all of a σ=1.5 Gaussian
    value, error = result.evaluate(200.0, 150.0)
    assert value == pytest.approx(1.0, abs=0.01)
    assert 0 < error < 0.01


def test_yaml_round_trip(tmp_path) -> None:
    stars = ApCorrStars(np.array([5, 9]), np.array([1.5, 2.5]), np.array([3.0, 4.0]), np.array([10.0, 20.0]),
                        np.array([11.0, 19.0]), np.array([1.1, 0.95]), np.array([0.01, 0.02]))
    ap_corr = ApertureCorrection(2, TRUE.copy(), 0.0017, 3, stars)
    path = tmp_path / "apCorr.yaml"
    ap_corr.write_yaml(path)
    assert path.read_text() == yaml.safe_dump(ap_corr.to_dict(), sort_keys=False)  # libyaml's text = PyYAML's
    back = ApertureCorrection.read_yaml(path)
    np.testing.assert_array_equal(back.coefficients, TRUE)
    assert back.error == 0.0017 and back.n_candidates == 3 and back.order == 2
    np.testing.assert_array_equal(back.stars.ids, [5, 9])
    np.testing.assert_array_equal(back.stars.ratio, [1.1, 0.95])


def test_application_formula() -> None:
    ap_corr = ApertureCorrection(0, np.array([0.98]), 0.002, 1, ApCorrStars(*(np.zeros(0),) * 7))
    columns = empty_columns(3, SOURCE_SCHEMA + EXTRA_SCHEMA)
    columns["centroid.sdss.x"][:] = [10.0, 20.0, 30.0]
    columns["centroid.sdss.y"][:] = [5.0, 6.0, 7.0]
    columns["flux.psf"][:] = [1000.0, 2000.0, np.nan]
    columns["flux.psf.err"][:] = [10.0, 20.0, 5.0]
    columns["flux.psf.psffactor"][:] = [20.0, 20.0, 20.0]
    columns["flux.gaussian"][:] = [900.0, 1800.0, 50.0]
    columns["flux.gaussian.psffactor"][:] = [20.0, 20.0, 20.0]  # = the flux.psf factor: no rescaling
    columns["flux.gaussian.err"][:] = [9.0, 18.0, 1.0]
    columns["flux.sinc"][:] = [1010.0, 2020.0, 60.0]
    columns["flux.sinc.err"][:] = [12.0, 24.0, 3.0]
    columns["multishapelet.exp.flux"][:] = [800.0, 1600.0, 40.0]
    columns["multishapelet.exp.flux.err"][:] = [8.0, 16.0, 4.0]
    columns["multishapelet.exp.psffactor"] = np.array([16.0, np.nan, 16.0])
    apply_aperture_correction(columns, ap_corr)
    np.testing.assert_array_equal(columns["aperturecorrection"], 0.98)
    np.testing.assert_array_equal(columns["aperturecorrection.err"], 0.002)
    assert columns["flux.psf"][0] == pytest.approx(980.0)
    assert columns["flux.psf.err"][0] == pytest.approx(np.hypot(0.98 * 10, 0.002 * 1000))
    assert columns["flux.gaussian"][1] == pytest.approx(0.98 * 1800)
    assert columns["flux.gaussian.err"][1] == pytest.approx(np.hypot(0.98 * 18, 0.002 * 1800))
    # flux.psf flagged (NaN): nothing corrected for that source
    assert columns["flux.gaussian"][2] == 50.0 and columns["flux.gaussian.err"][2] == 1.0
    # flux.sinc untouched
    np.testing.assert_array_equal(columns["flux.sinc"], [1010.0, 2020.0, 60.0])
    # multishapelet: F' = F·p_psf/p, then a·F'; a NaN PSF factor keeps the raw value
    assert columns["multishapelet.exp.flux"][0] == pytest.approx(0.98 * 800 * 20 / 16)
    assert columns["multishapelet.exp.flux.err"][0] == pytest.approx(np.hypot(0.98 * 10, 0.002 * 1000))
    assert columns["multishapelet.exp.flux"][1] == 1600.0


def test_circular_reference_flux_includes_the_wings_the_7px_sinc_aperture_misses(tmp_path) -> None:
    """Stars of 90 % σ = 1.5 px core and 10 % σ = 5 px halo: a 12-px circle holds 1 - 0.1 exp(-12²/50) =
    99.44 % of the flux, a 7-px one 1 - 0.1 exp(-7²/50) = 96.25 % (the core is all in both): the circular
    reference's ratios are 1.0331 times the sinc ones."""
    positions = [(60.3, 60.7), (200.0, 60.2), (330.6, 70.1), (80.2, 150.5), (210.9, 160.4), (320.1, 230.8),
                 (70.5, 235.0), (190.4, 230.3)]
    core = _exposure_with_stars(positions, flux=0.9e6)
    halo = _exposure_with_stars(positions, flux=0.1e6, sigma=5.0)
    exposure = _exposure_with_stars([], flux=0.0)
    exposure.image = core.image + halo.image - exposure.image  # one noise realisation too many, subtracted
    columns = empty_columns(len(positions), SOURCE_SCHEMA + EXTRA_SCHEMA)
    columns["id"] = np.arange(1, len(positions) + 1)
    columns["centroid.sdss.x"] = np.array([p[0] for p in positions])
    columns["centroid.sdss.y"] = np.array([p[1] for p in positions])
    sinc = ApCorrTask().run(exposure, columns, np.arange(len(positions)))
    circular = ApCorrTask(ApCorrConfig(reference_flux="flux.circular")).run(exposure, columns,
                                                                          np.arange(len(positions)))
    expected = (1 - 0.1 * np.exp(-144 / 50)) / (1 - 0.1 * np.exp(-49 / 50))
    np.testing.assert_allclose(circular.stars.ratio / sinc.stars.ratio, expected, rtol=0.002)
    path = tmp_path / "apCorr.yaml"
    circular.write_yaml(path)
    assert "flux.circular/flux.psf" in path.read_text()
    back = ApertureCorrection.read_yaml(path)
    assert back.reference_flux == "flux.circular"
    np.testing.assert_array_equal(back.stars.flux_sinc, circular.stars.flux_sinc)


# --- the LSST 2016-2020 fit (fit: chebyshev) ---------------------------------------------------------------------

BBOX = image_bbox((1361, 2048))  # an SDSS frame: (-0.5, -0.5, 2047.5, 1360.5)
# a smooth ratio field, numpy's chebval2d convention: TRUE_CHEB[i, j] multiplies T_i(x') T_j(y'), i + j <= 2
TRUE_CHEB = np.array([[1.02, 0.004, -0.003], [0.006, 0.002, 0.0], [-0.005, 0.0, 0.0]])


def _true_field(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x0, y0, x1, y1 = BBOX
    return np.polynomial.chebyshev.chebval2d((2 * x - x0 - x1) / (x1 - x0), (2 * y - y0 - y1) / (y1 - y0),
                                             TRUE_CHEB)


def _as_chebval2d_matrix(coefficients: np.ndarray, order: int) -> np.ndarray:
    """Our triangular order (T_(d-k)(y') T_k(x'), d = 0..order, k = 0..d) as chebval2d's [i (x), j (y)] matrix."""
    matrix = np.zeros((order + 1, order + 1))
    index = 0
    for d in range(order + 1):
        for k in range(d + 1):
            matrix[k, d - k] = coefficients[index]
            index += 1
    return matrix


def test_chebyshev_terms_map_the_box_to_minus_one_one_and_match_numpy() -> None:
    x0, y0, x1, y1 = BBOX
    corners = chebyshev_terms(np.array([x0, x1]), np.array([y0, y1]), 1, BBOX)
    np.testing.assert_allclose(corners, [[1, -1, -1], [1, 1, 1]])  # terms 1, T1(y'), T1(x')
    rng = np.random.default_rng(4)
    x, y = _positions(30, rng)
    coefficients = rng.normal(size=6)
    expected = np.polynomial.chebyshev.chebval2d((2 * x - x0 - x1) / (x1 - x0), (2 * y - y0 - y1) / (y1 - y0),
                                                 _as_chebval2d_matrix(coefficients, 2))
    np.testing.assert_allclose(chebyshev_terms(x, y, 2, BBOX) @ coefficients, expected, rtol=1e-12)


def test_chebyshev_fit_recovers_a_smooth_field_and_clips_the_outliers() -> None:
    rng = np.random.default_rng(5)
    x, y = _positions(60, rng)
    ratio = _true_field(x, y) + rng.normal(0, 0.002, 60)
    outliers = np.array([3, 17, 41])
    ratio[outliers] += np.array([0.08, -0.05, 0.12])  # a blend, a cosmic ray, a galaxy among the "stars"
    order, coefficients, error, used = fit_chebyshev_clipped(x, y, ratio, 2, BBOX)
    assert order == 2
    np.testing.assert_array_equal(np.flatnonzero(~used), outliers)
    np.testing.assert_allclose(_as_chebval2d_matrix(coefficients, 2), TRUE_CHEB, atol=0.0015)
    assert 0.0015 < error < 0.0025  # the RMS of the kept stars' residuals: the injected 0.002 scatter
    # over the whole frame, corners included, within 0.2 % of the truth
    gx, gy = np.meshgrid(np.linspace(BBOX[0], BBOX[2], 9), np.linspace(BBOX[1], BBOX[3], 7))
    fitted = chebyshev_terms(gx, gy, 2, BBOX) @ coefficients
    assert np.max(np.abs(fitted - _true_field(gx.ravel(), gy.ravel()))) < 0.002
    # without clipping the outliers pull the field by more than the noise
    _, unclipped, _, kept = fit_chebyshev_clipped(x, y, ratio, 2, BBOX, clip_iterations=0)
    assert kept.all()
    assert np.max(np.abs(chebyshev_terms(gx, gy, 2, BBOX) @ unclipped - _true_field(gx.ravel(), gy.ravel()))) > 0.004


def test_chebyshev_fit_does_not_blow_up_where_2013s_weighted_fit_does() -> None:
    """Stars in the middle of the frame, a few bright ones with tiny errors: 2013's 1/σ⁴ weights let those few
    fix the quadratic, which extrapolates to the corners; the unweighted, clipped fit of the same stars stays
    near the (constant) truth."""
    rng = np.random.default_rng(6)
    n = 40
    x, y = rng.uniform(500, 1550, n), rng.uniform(300, 1060, n)
    sigma = np.full(n, 0.01)
    sigma[:5] = 0.0005  # five bright stars dominate 2013's fit
    ratio = 1.03 + rng.normal(0, 0.003, n)
    ratio[:5] += np.array([0.004, -0.004, 0.003, -0.003, 0.004])  # ordinary scatter, but they carry the fit
    corners_x, corners_y = np.array([0.0, 2047.0, 0.0, 2047.0]), np.array([0.0, 0.0, 1360.0, 1360.0])
    order_2013, c_2013, _ = fit_aperture_correction(x, y, ratio, sigma, 2)
    old = polynomial_terms(corners_x, corners_y, order_2013) @ c_2013
    order, coefficients, _, _ = fit_chebyshev_clipped(x, y, ratio, 2, BBOX)
    new = chebyshev_terms(corners_x, corners_y, order, BBOX) @ coefficients
    assert np.max(np.abs(new - 1.03)) < 0.01
    assert np.max(np.abs(old - 1.03)) > 2 * np.max(np.abs(new - 1.03))


def test_chebyshev_order_is_lowered_to_keep_one_degree_of_freedom() -> None:
    x, y = np.array([100.0, 1500.0, 900.0, 300.0, 1800.0]), np.array([200.0, 1000.0, 50.0, 1200.0, 700.0])
    ratio = np.array([1.0, 1.01, 0.99, 1.0, 1.02])
    assert fit_chebyshev_clipped(x, y, ratio, 2, BBOX)[0] == 1  # 5 stars: 6 terms too many, 3 leave 2
    assert fit_chebyshev_clipped(x[:3], y[:3], ratio[:3], 2, BBOX)[0] == 0  # 3 stars: a constant
    order, coefficients, error, used = fit_chebyshev_clipped(np.zeros(0), np.zeros(0), np.zeros(0), 2, BBOX)
    assert (order, error, len(used)) == (0, 0.0) + (0,) and coefficients.tolist() == [1.0]


def test_task_with_the_chebyshev_fit_and_its_yaml_round_trip(tmp_path) -> None:
    positions = STAR_POSITIONS
    exposure, columns = _synthetic_star_frame(positions)
    result = ApCorrTask(ApCorrConfig(fit="chebyshev")).run(exposure, columns, np.arange(len(positions)))
    assert result.fit == "chebyshev" and result.bbox == (-0.5, -0.5, 399.5, 299.5) and result.order == 2
    value, error = result.evaluate(np.array([0.0, 200.0, 399.0]), np.array([0.0, 150.0, 299.0]))
    np.testing.assert_allclose(value, 1.0, atol=0.01)
    assert 0 < error[0] < 0.01
    path = tmp_path / "apCorr.yaml"
    result.write_yaml(path)
    back = ApertureCorrection.read_yaml(path)
    assert back.fit == "chebyshev" and back.bbox == result.bbox
    np.testing.assert_array_equal(back.used, result.used)
    np.testing.assert_array_equal(back.evaluate(123.0, 45.0)[0], result.evaluate(123.0, 45.0)[0])


def test_chebyshev_correction_scales_the_flux_errors_without_adding_its_own() -> None:
    stars = ApCorrStars(*(np.zeros(0),) * 7)
    ap_corr = ApertureCorrection(0, np.array([1.05]), 0.04, 1, stars, "flux.circular", "chebyshev", BBOX,
                                 np.zeros(0, dtype=bool))
    columns = empty_columns(2, SOURCE_SCHEMA + EXTRA_SCHEMA)
    columns["centroid.sdss.x"][:] = [10.0, 20.0]
    columns["centroid.sdss.y"][:] = [5.0, 6.0]
    columns["flux.psf"][:] = [1000.0, 2000.0]
    columns["flux.psf.err"][:] = [10.0, 20.0]
    columns["flux.psf.psffactor"][:] = [20.0, 20.0]
    apply_aperture_correction(columns, ap_corr)
    np.testing.assert_allclose(columns["flux.psf"], [1050.0, 2100.0])
    np.testing.assert_allclose(columns["flux.psf.err"], [10.5, 21.0])  # 2013's formula: hypot(10.5, 40) = 41.4
    np.testing.assert_array_equal(columns["aperturecorrection.err"], 0.04)


def test_min_snr_keeps_the_bright_stars_or_else_the_brightest_few() -> None:
    snr = np.array([250.0, 40.0, np.nan, 320.0, 199.9, 200.0, 90.0])
    np.testing.assert_array_equal(bright_enough(snr, 200.0, 3), [1, 0, 0, 1, 0, 1, 0])
    np.testing.assert_array_equal(bright_enough(snr, 200.0, 4), [1, 0, 0, 1, 1, 1, 0])  # too few: the 4 brightest
    np.testing.assert_array_equal(bright_enough(snr[:3], 200.0, 10), [1, 1, 0])  # fewer than 4 finite: all finite


def test_task_min_snr_drops_the_faint_stars() -> None:
    positions = [(60.3, 50.7), (200.0, 60.2), (330.6, 70.1), (80.2, 150.5), (210.9, 160.4), (320.1, 240.8),
                 (70.5, 250.0), (190.4, 240.3)]
    exposure = _exposure_with_stars(positions[:4], flux=2e5)
    faint = _exposure_with_stars(positions[4:], flux=2e3)
    exposure.image = exposure.image + faint.image  # (two noise realisations: S/N of the faint ones ~ 40)
    columns = empty_columns(len(positions), SOURCE_SCHEMA + EXTRA_SCHEMA)
    columns["id"] = np.arange(1, len(positions) + 1)
    columns["centroid.sdss.x"] = np.array([p[0] for p in positions])
    columns["centroid.sdss.y"] = np.array([p[1] for p in positions])
    config = ApCorrConfig(fit="chebyshev", min_snr=200.0, min_snr_stars=3)
    result = ApCorrTask(config).run(exposure, columns, np.arange(len(positions)))
    np.testing.assert_array_equal(result.stars.ids, [1, 2, 3, 4])
    assert result.n_candidates == 8
