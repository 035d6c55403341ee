"""Tests of the afw-style clipped statistics and the natural-spline background."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.interpolate import CubicSpline

from processccd.background import (
    BackgroundConfig,
    cell_centres,
    cell_edges,
    clipped_mean,
    clipped_stats,
    clipped_stdev,
    estimate_background,
    natural_spline_weights,
    percentiles,
)
from processccd.errors import CalibrationError
from processccd.stats import IQR_TO_SIGMA


def reference_clipped(values: np.ndarray, n_sigma: float = 3.0, n_iter: int = 3) -> tuple[float, float]:
    """Straightforward MEANCLIP/STDEVCLIP: median/IQR window, then mean/sd windows, n - 1 variance."""
    v = np.asarray(values, dtype=np.float64).ravel()
    q25, med, q75 = np.percentile(v, [25, 50, 75])
    centre, width = med, n_sigma * IQR_TO_SIGMA * (q75 - q25)
    for _ in range(n_iter):
        kept = v[np.abs(v - centre) <= width]
        mean, sd = kept.mean(), kept.std(ddof=1)
        centre, width = mean, n_sigma * sd
    return mean, sd


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 250_001])
def test_percentiles_match_numpy_linear(n: int) -> None:
    rng = np.random.default_rng(n)
    values = rng.normal(100.0, 5.0, n).astype(np.float32)
    fractions = (0.0, 0.25, 0.5, 0.75, 1.0)
    expected = np.percentile(values, np.array(fractions) * 100)
    np.testing.assert_allclose(percentiles(values, fractions), expected, rtol=1e-12)


def test_percentiles_with_many_ties_take_the_exact_path() -> None:
    values = np.random.default_rng(3).integers(0, 5, 400_000).astype(np.float32)
    np.testing.assert_array_equal(percentiles(values, (0.25, 0.5, 0.75)), np.percentile(values, [25, 50, 75]))


@pytest.mark.parametrize("seed", range(5))
def test_clipped_stats_match_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = rng.normal(50.0, 4.0, 300_000)
    values[:3000] += rng.exponential(200.0, 3000)  # a tail of "stars" the clipping must reject
    values = values.astype(np.float32)
    mean, sd = reference_clipped(values)
    stats = clipped_stats(values)
    assert stats.mean == pytest.approx(mean, rel=1e-12)
    assert stats.stdev == pytest.approx(sd, rel=1e-10)
    assert clipped_mean(values) == stats.mean and clipped_stdev(values) == stats.stdev
    assert abs(stats.mean - 50.0) < 0.05 and abs(stats.stdev - 4.0) < 0.2  # the tail is clipped


def test_clipped_stats_do_not_depend_on_earlier_calls() -> None:
    rng = np.random.default_rng(6)
    small = rng.normal(10.0, 2.0, 5_000).astype(np.float32)
    first = clipped_stats(small)
    clipped_stats(rng.normal(-300.0, 50.0, 200_000).astype(np.float32))  # fills the shared scratch
    assert clipped_stats(small) == first
    assert clipped_stats(small[::-1].copy()).n_kept == first.n_kept


def test_clipped_stats_of_a_constant_and_of_nothing() -> None:
    stats = clipped_stats(np.full(100, 7.0))
    assert stats.mean == 7.0 and stats.stdev == 0.0 and stats.n_kept == 100
    with pytest.raises(ValueError):
        clipped_stats(np.zeros(0))


def test_cell_edges_follow_the_afw_rule() -> None:
    assert np.diff(cell_edges(2048, 5)).tolist() == [410, 409, 410, 409, 410]
    assert np.diff(cell_edges(1361, 3)).tolist() == [454, 453, 454]
    np.testing.assert_array_equal(cell_centres(cell_edges(2048, 5)), [204.5, 614.0, 1023.5, 1433.0, 1842.5])


def test_spline_weights_interpolate_naturally_and_extrapolate_linearly() -> None:
    knots = np.array([204.5, 614.0, 1023.5, 1433.0, 1842.5])
    values = np.array([3.0, -1.0, 4.0, 1.5, 9.0])
    positions = np.arange(2048.0)
    model = natural_spline_weights(knots, positions) @ values
    spline = CubicSpline(knots, values, bc_type="natural")
    inside = (positions >= knots[0]) & (positions <= knots[-1])
    np.testing.assert_allclose(model[inside], spline(positions[inside]), atol=1e-12)
    below, above = positions < knots[0], positions > knots[-1]
    np.testing.assert_allclose(
        model[below], values[0] + spline(knots[0], 1) * (positions[below] - knots[0]), atol=1e-12
    )
    np.testing.assert_allclose(
        model[above], values[-1] + spline(knots[-1], 1) * (positions[above] - knots[-1]), atol=1e-12
    )
    assert not np.allclose(model[above], spline(positions[above]))  # not the cubic continuation


def synthetic_sky(rng: np.random.Generator, shape: tuple[int, int], noise: float) -> tuple[np.ndarray, np.ndarray]:
    """A tilted plane plus noise plus a few bright Gaussian stars; returns (image, true plane)."""
    height, width = shape
    y, x = np.mgrid[:height, :width]
    plane = 100.0 + 0.01 * x - 0.02 * y
    image = plane + rng.normal(0.0, noise, shape)
    for _ in range(30):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        image += rng.uniform(200, 5000) * np.exp(-0.5 * ((x - cx) ** 2 + (y - cy) ** 2) / 1.5**2)
    return image.astype(np.float32), plane


def test_background_recovers_a_plane_well_below_the_noise() -> None:
    rng = np.random.default_rng(11)
    image, plane = synthetic_sky(rng, (700, 900), noise=10.0)
    model = estimate_background(image, None, 0, bin_size=200)
    assert model.image.dtype == np.float32 and model.image.shape == image.shape
    assert model.cell_values.shape == (4, 5)
    assert np.sqrt(np.mean((model.image - plane) ** 2)) < 0.5  # noise is 10 DN per pixel
    assert np.max(np.abs(model.image - plane)) < 1.5


def test_model_is_the_float64_spline_product_rounded_once() -> None:
    rng = np.random.default_rng(4)
    image = rng.normal(20.0, 3.0, (301, 407)).astype(np.float32)  # not a whole number of row blocks
    model = estimate_background(image, None, 0, bin_size=100)
    along_y = natural_spline_weights(model.cell_centres_y, np.arange(301)) @ model.cell_values
    expected = along_y @ natural_spline_weights(model.cell_centres_x, np.arange(407)).T
    np.testing.assert_array_equal(model.image, expected.astype(np.float32))


def test_masked_pixels_are_ignored() -> None:
    rng = np.random.default_rng(5)
    image, _ = synthetic_sky(rng, (500, 600), noise=5.0)
    mask = np.zeros(image.shape, dtype=np.int32)
    mask[100:180, 50:400] = 32
    corrupted = image.copy()
    corrupted[mask != 0] = 1e5
    reference = estimate_background(image, mask, 32, bin_size=150)
    masked = estimate_background(corrupted, mask, 32 | 64, bin_size=150)
    np.testing.assert_array_equal(reference.image, masked.image)
    unmasked = estimate_background(corrupted, mask, 16, bin_size=150)
    assert np.max(unmasked.image) > np.max(reference.image) + 1.0


def test_cell_value_is_the_clipped_mean_of_the_cell() -> None:
    rng = np.random.default_rng(2)
    image = rng.normal(20.0, 3.0, (300, 400)).astype(np.float32)
    model = estimate_background(image, None, 0, bin_size=100)
    edges_x, edges_y = cell_edges(400, 5), cell_edges(300, 4)
    expected = clipped_mean(image[edges_y[2] : edges_y[3], edges_x[1] : edges_x[2]])
    assert model.cell_values[2, 1] == expected
    np.testing.assert_allclose(model.cell_centres_y, cell_centres(edges_y))


def test_too_coarse_a_grid_raises() -> None:
    with pytest.raises(CalibrationError, match="natural spline"):
        estimate_background(np.zeros((300, 300), np.float32), None, 0, bin_size=512)


def test_fully_masked_cell_raises() -> None:
    mask = np.zeros((300, 300), dtype=np.int32)
    mask[:100, :100] = 16
    with pytest.raises(CalibrationError, match="no usable pixels"):
        estimate_background(np.zeros((300, 300), np.float32), mask, 16, bin_size=100)


def test_config_validation() -> None:
    assert BackgroundConfig().bin_size == 512
    with pytest.raises(ValueError):
        BackgroundConfig(statistic="MEDIAN")
