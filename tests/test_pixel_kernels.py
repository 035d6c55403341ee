"""The compiled pixel kernels (processccd.pixel_kernels) against the numpy/scipy computations they replace."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from processccd import pixel_kernels
from processccd.background import percentiles
from processccd.detection import (
    DetectionConfig,
    detect_sources,
    gaussian_kernel_1d,
    smooth_middle,
)
from processccd.tasks.star_selector import StarSelectorTask
from reference_impl.detection import grow_diamond


def _awkward_float32(rng: np.random.Generator, n: int, kind: int) -> np.ndarray:
    """Sky-like, integer-valued (many ties), wide-range (with subnormals) or signed values with ±0 and ±inf."""
    if kind == 0:
        return rng.normal(100.0, 5.0, n).astype(np.float32)
    if kind == 1:
        return rng.integers(-3, 4, n).astype(np.float32)
    if kind == 2:
        return (rng.normal(0.0, 1.0, n) * 10.0 ** rng.integers(-44, 30, n)).astype(np.float32)
    return np.concatenate([rng.normal(0.0, 1.0, n), [np.inf, -np.inf, 0.0, -0.0, 0.0]]).astype(np.float32)


@pytest.mark.parametrize("kind", range(4))
def test_order_statistics_are_those_of_the_sorted_array(kind: int) -> None:
    rng = np.random.default_rng(kind)
    for n in (1, 2, 7, 300, 5000, 70_000):
        values = _awkward_float32(rng, n, kind)
        ranks = np.unique(rng.integers(0, values.size, 6))
        ok, selected = pixel_kernels.float32_order_statistics(values, ranks)
        assert ok
        expected = np.sort(values)[ranks]
        np.testing.assert_array_equal(selected, expected)  # -0.0 == 0.0 here, as in the sort


def test_order_statistics_refuse_nan_and_percentiles_fall_back() -> None:
    values = np.array([3.0, np.nan, 1.0, 2.0], dtype=np.float32)
    ok, _ = pixel_kernels.float32_order_statistics(values, np.array([0, 1]))
    assert not ok
    negative_nan = np.array([0xFFC00001], dtype=np.uint32).view(np.float32)
    for special in (negative_nan, np.array([np.inf, np.nan], dtype=np.float32)):
        ok, _ = pixel_kernels.float32_order_statistics(np.concatenate([values[[0, 2, 3]], special]), np.array([0]))
        assert not ok
    np.testing.assert_array_equal(percentiles(values, (0.0, 0.5)), [1.0, 2.5])  # NaN sorts last, as in partition


@pytest.mark.parametrize("kind", range(4))
def test_float32_percentiles_equal_the_partition_path_bit_for_bit(kind: int) -> None:
    values = _awkward_float32(np.random.default_rng(10 + kind), 50_000, kind)
    fractions = (0.25, 0.5, 0.75, 0.1)
    np.testing.assert_array_equal(percentiles(values, fractions), percentiles(values.astype(np.float64), fractions))


def test_split_core_matches_boolean_indexing() -> None:
    values = np.random.default_rng(1).normal(0.0, 1.0, 10_001).astype(np.float32)
    lo, hi, reference = -0.7, 1.3, 0.1
    offsets = np.full(values.size, np.nan)
    n_core, rest = pixel_kernels.split_core(values, lo, hi, reference, offsets)
    core = offsets[:n_core]
    inside = (values.astype(np.float64) >= lo) & (values.astype(np.float64) <= hi)
    np.testing.assert_array_equal(core, values[inside].astype(np.float64) - reference)
    np.testing.assert_array_equal(rest, values[~inside])


def test_unmasked_values_match_boolean_indexing() -> None:
    rng = np.random.default_rng(2)
    image = rng.normal(0.0, 1.0, (50, 60)).astype(np.float32)
    mask = rng.integers(0, 8, (50, 60)).astype(np.uint16)
    selected = pixel_kernels.unmasked_values(image, mask, 6, 5, 40, 7, 51)
    cell = np.s_[5:40, 7:51]
    np.testing.assert_array_equal(selected, image[cell][(mask[cell] & 6) == 0])


def _scipy_smooth_middle(image: np.ndarray, sigma: float, kernel_size: int) -> np.ndarray:
    """The smoothing as scipy.ndimage.correlate1d computes it (x, then y, float32 after each pass)."""
    border = kernel_size // 2
    height, width = image.shape
    kernel = gaussian_kernel_1d(sigma, kernel_size)
    half = min(int(np.flatnonzero(kernel >= 1e-12 * kernel.max()).max()) - border, border)
    taps = kernel[border - half : border + half + 1]
    rows = np.asarray(image, dtype=np.float32)[:, border - half : width - border + half]
    along_x = ndimage.correlate1d(rows, taps, axis=1, output=np.float32, mode="constant")[:, half : -half or None]
    along_x = along_x[border - half : height - border + half]
    along_y = ndimage.correlate1d(along_x, taps, axis=0, output=np.float32, mode="constant")
    return along_y[half : along_y.shape[0] - half]


@pytest.mark.parametrize(("sigma", "kernel_size", "shape"),
                         [(0.8, 31, (120, 150)), (1.1, 31, (64, 70)), (1.5, 31, (90, 91)), (2.5, 15, (40, 45)),
                          (6.0, 31, (80, 80)), (0.3, 5, (20, 30)),
                          (2.5, 31, (33, 40))])  # 3 output rows, fewer than the taps
def test_smoothing_is_bit_identical_to_scipy(sigma: float, kernel_size: int, shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(3)
    image = (rng.normal(0.0, 10.0, shape) * 10.0 ** rng.integers(-3, 4, shape)).astype(np.float32)
    np.testing.assert_array_equal(smooth_middle(image, sigma, kernel_size),
                                  _scipy_smooth_middle(image, sigma, kernel_size))


def test_threshold_spans_are_the_runs_of_the_thresholded_image() -> None:
    rng = np.random.default_rng(4)
    image = rng.normal(0.0, 1.0, (40, 57)).astype(np.float32)
    image[3, :] = 5.0  # a run over a whole row
    image[7, 10] = np.nan  # never above
    rows, firsts, lasts = pixel_kernels.threshold_spans(image, np.float32(0.8))
    padded = np.zeros((40, 59), dtype=np.int8)
    padded[:, 1:-1] = image >= np.float32(0.8)
    steps = np.diff(padded, axis=1)
    expected_rows, expected_firsts = np.nonzero(steps == 1)
    _, past_lasts = np.nonzero(steps == -1)
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(firsts, expected_firsts)
    np.testing.assert_array_equal(lasts, past_lasts - 1)
    rows, firsts, lasts = pixel_kernels.threshold_spans(-image, np.float32(-0.8), True)  # the same runs
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(firsts, expected_firsts)
    np.testing.assert_array_equal(lasts, past_lasts - 1)


def test_grow_diamond_equals_repeated_four_neighbour_dilation() -> None:
    rng = np.random.default_rng(5)
    for _ in range(50):
        binary = rng.random(tuple(rng.integers(1, 30, 2))) < rng.random() * 0.2
        radius = int(rng.integers(0, 6))
        expected = binary.copy()
        for _ in range(radius):
            expected = ndimage.binary_dilation(expected)  # the 4-neighbour cross, clipped at the edges
        np.testing.assert_array_equal(grow_diamond(binary, radius), expected)


def test_peak_ties_go_to_the_first_pixel_in_raster_order() -> None:
    image = np.zeros((60, 60), dtype=np.float32)
    image[30, 28:33] = 100.0  # flat-topped: the smoothed maximum is shared by symmetric pixels
    image[29:32, 30] = 100.0
    config = DetectionConfig(threshold=1.0, threshold_type="value", re_estimate_background=False, kernel_size=5)
    footprints = detect_sources(image, np.zeros(image.shape, np.uint16), 1.0, config).footprints
    assert len(footprints) == 1
    ys, xs = footprints.pixels(0)
    smoothed = np.zeros(image.shape, dtype=np.float32)
    smoothed[2:-2, 2:-2] = smooth_middle(image, 1.0, 5)
    values = smoothed[ys, xs]
    first = int(np.flatnonzero(values == values.max())[0])
    assert (footprints.peak_x[0], footprints.peak_y[0]) == (xs[first], ys[first])


def test_stamp_check_matches_a_per_star_loop() -> None:
    rng = np.random.default_rng(6)
    image = rng.normal(0.0, 1.0, (80, 90)).astype(np.float32)
    image[40, 45] = np.nan
    image[10, 70] = np.inf
    xs = np.concatenate([rng.uniform(-5.0, 95.0, 200), [np.nan, 45.2, 70.0, 1e300]])
    ys = np.concatenate([rng.uniform(-5.0, 85.0, 200), [40.0, np.nan, 10.4, 40.0]])
    with np.errstate(invalid="ignore"):  # rounding 1e300 to int64 overflows (the stamp is then outside)
        ok = StarSelectorTask()._stamp_ok(image, xs, ys)
    half = 10
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        expected = False
        if np.isfinite(x) and np.isfinite(y):
            cx, cy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
            if cx - half >= 0 and cy - half >= 0 and cx + half < 90 and cy + half < 80:
                expected = bool(np.isfinite(np.max(image[cy - half : cy + half + 1, cx - half : cx + half + 1])))
        assert ok[i] == expected, i


def test_many_ranks_at_once() -> None:
    values = _awkward_float32(np.random.default_rng(7), 20_000, 0)
    fractions = tuple(np.linspace(0.0, 1.0, 300))  # ~600 order statistics, in many bins
    np.testing.assert_array_equal(percentiles(values, fractions), percentiles(values.astype(np.float64), fractions))
