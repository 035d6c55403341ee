"""Tests of the LSST-2013 detection stage: smoothing, threshold, footprint order, growth, masks."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
from scipy import ndimage

from processccd.detection import (
    MASK_BITS,
    DetectionConfig,
    detect_sources,
    gaussian_kernel_1d,
    smooth_middle,
)
from processccd.meas.pixel_flags import pixel_flags
from processccd.pixel_kernels import threshold_spans
from reference_impl.detection import grow_diamond, lsst_footprint_labels

EDGE, DETECTED, DETECTED_NEGATIVE = MASK_BITS["EDGE"], MASK_BITS["DETECTED"], MASK_BITS["DETECTED_NEGATIVE"]


def reference_scan_labels(binary: np.ndarray) -> np.ndarray:
    """Pixel-by-pixel transcription of spec §2.1 step 5 (slow; for small test images only)."""
    height, width = binary.shape
    ids = np.zeros((height + 1, width + 2), dtype=np.int64)  # ids[y + 1, x + 1]; row 0 and the sides stay 0
    alias = [0]

    def resolve(label: int) -> int:
        while alias[label] != label:
            label = alias[label]
        return label

    for y in range(height):
        for x in range(width):
            if not binary[y, x]:
                continue
            left, lower_left, lower, lower_right = ids[y + 1, x], ids[y, x], ids[y, x + 1], ids[y, x + 2]
            label = next((n for n in (left, lower_left, lower, lower_right) if n), 0)
            if label == 0:
                alias.append(len(alias))
                label = len(alias) - 1
            if lower_right and lower_right != label:
                alias[resolve(lower_right)] = resolve(label)
                label = lower_right
            ids[y + 1, x + 1] = label
    roots = np.zeros((height, width), dtype=np.int64)
    for y, x in zip(*np.nonzero(binary), strict=True):
        roots[y, x] = resolve(ids[y + 1, x + 1])
    emitted = np.unique(roots[roots > 0])
    rank = np.zeros(len(alias), dtype=np.int64)
    rank[emitted] = np.arange(1, emitted.size + 1)
    return rank[roots]


def pattern(rows: list[str]) -> np.ndarray:
    """Boolean image from strings; the first string is row y = 0 (scanned first)."""
    return np.array([[c != "." for c in row] for row in rows])


def test_new_label_absorbing_an_earlier_footprint_is_emitted_late() -> None:
    # A (first pixel (3, 0)) starts label 1, D label 2; C's row-1 span starts a new label 3 and then
    # absorbs A through its lower-right neighbour: A+C is emitted under root 3, after D.
    binary = pattern(["...A.D", "CCCC.."])
    labels = lsst_footprint_labels(binary)
    assert labels[0, 5] == 1 and labels[0, 3] == 2 and labels[1, 0] == 2
    first_pixel_order, _ = ndimage.label(binary, structure=np.ones((3, 3)))
    assert first_pixel_order[0, 3] == 1  # plain raster order would differ
    np.testing.assert_array_equal(labels, reference_scan_labels(binary))


def test_continuing_span_absorbs_the_lower_right_footprint_under_its_own_root() -> None:
    # A = label 1 at (3, 0), C = label 2 at (5, 0), B = label 3 at (0, 1); row 2 continues B and absorbs A
    # under root 3, so C (root 2) comes first although A+B starts earlier in raster order.
    binary = pattern(["...A.C", "B..A..", "BBB..."])
    labels = lsst_footprint_labels(binary)
    assert labels[0, 5] == 1 and labels[0, 3] == 2 and labels[2, 0] == 2
    np.testing.assert_array_equal(labels, reference_scan_labels(binary))


def test_u_shape_keeps_the_root_of_the_left_arm() -> None:
    binary = pattern(["A...B.C", "A...B..", "AAAAA.."])
    labels = lsst_footprint_labels(binary)
    assert labels[0, 0] == 1 and labels[0, 4] == 1 and labels[0, 6] == 2
    np.testing.assert_array_equal(labels, reference_scan_labels(binary))


@pytest.mark.parametrize("seed", range(40))
def test_span_labelling_matches_the_pixel_scan(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(1, 30)), int(rng.integers(1, 30)))
    binary = rng.random(shape) < rng.uniform(0.15, 0.65)
    labels = lsst_footprint_labels(binary)
    np.testing.assert_array_equal(labels, reference_scan_labels(binary))
    components, n = ndimage.label(binary, structure=np.ones((3, 3)))
    assert labels.max() == n and np.array_equal(labels > 0, binary)


def test_empty_image_has_no_footprints() -> None:
    assert not lsst_footprint_labels(np.zeros((5, 7), dtype=bool)).any()


def test_grow_uses_the_manhattan_diamond() -> None:
    binary = np.zeros((21, 21), dtype=bool)
    binary[10, 10] = True
    grown = grow_diamond(binary, 3)
    y, x = np.mgrid[:21, :21]
    np.testing.assert_array_equal(grown, np.abs(x - 10) + np.abs(y - 10) <= 3)
    assert grown.sum() == 25
    corner = np.zeros((5, 5), dtype=bool)
    corner[0, 0] = True
    assert grow_diamond(corner, 2).sum() == 6  # clipped at the array edge


def test_smoothing_matches_a_brute_force_convolution_on_the_middle() -> None:
    rng = np.random.default_rng(4)
    image = rng.normal(0.0, 1.0, (80, 95)).astype(np.float32)
    image[40, 50] = 1000.0
    kernel = gaussian_kernel_1d(1.3, 31)
    assert kernel.sum() == pytest.approx(1.0) and kernel.argmax() == 15
    expected = ndimage.correlate(image.astype(np.float64), np.outer(kernel, kernel))[15:-15, 15:-15]
    smoothed = smooth_middle(image, 1.3, 31)
    assert smoothed.dtype == np.float32 and smoothed.shape == (50, 65)
    np.testing.assert_allclose(smoothed, expected, atol=1e-5)


def star_field(
    rng: np.random.Generator,
    shape: tuple[int, int],
    stars: list[tuple[float, float, float]],
    noise: float,
    sigma: float,
) -> np.ndarray:
    """Gaussian stars (x, y, flux) of width `sigma` on Gaussian noise."""
    y, x = np.mgrid[: shape[0], : shape[1]]
    image = rng.normal(0.0, noise, shape)
    for cx, cy, flux in stars:
        image += flux / (2 * np.pi * sigma**2) * np.exp(-0.5 * ((x - cx) ** 2 + (y - cy) ** 2) / sigma**2)
    return image.astype(np.float32)


STARS = [(100.3, 80.6, 4000.0), (400.0, 300.2, 20000.0), (250.7, 500.1, 1500.0), (520.2, 150.9, 800.0)]


def test_detect_sources_finds_stars_and_sets_the_masks(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(7)
    shape, sigma, noise = (600, 640), 1.5, 5.0
    image = star_field(rng, shape, STARS, noise, sigma)
    image[200:203, 200:203] -= 400.0  # a negative blob: masked, never a source
    plane = 0.1 + 0.0003 * np.mgrid[: shape[0], : shape[1]][1]  # a residual sky, well below threshold
    mask = np.zeros(shape, dtype=np.int32)
    mask[10, 10] = DETECTED  # stale bits are cleared first
    config = DetectionConfig(bin_size=150)
    with caplog.at_level(logging.INFO, logger="processCcd.detection"):
        result = detect_sources(image + plane.astype(np.float32), mask, sigma, config)
    # threshold: 5 x the stdev of noise smoothed by a unit-sum Gaussian of width sigma
    assert result.threshold == pytest.approx(5 * noise / (2 * np.sqrt(np.pi) * sigma), rel=0.05)
    footprints = result.footprints
    assert result.n_positive == len(footprints)
    found = set(zip(footprints.peak_x.tolist(), footprints.peak_y.tolist(), strict=True))
    expected = {(round(x), round(y)) for x, y, _ in STARS}
    assert expected <= found
    is_star = np.array([(x, y) in expected for x, y in zip(footprints.peak_x, footprints.peak_y, strict=True)])
    assert np.all(footprints.peak_value[~is_star] < 1.3 * result.threshold)  # the rest: noise peaks
    # ids follow the raster scan (rows upwards): the stars come out in increasing row
    assert np.all(np.diff(footprints.peak_y[is_star]) > 0)
    assert f"Detected {len(footprints)} positive sources to 5 sigma" in caplog.text
    # masks
    assert mask[10, 10] == DETECTED  # the input is not modified
    edge = (result.mask & EDGE) != 0
    assert edge[:15].all() and edge[:, -15:].all() and not edge[15:-15, 15:-15].any()
    detected = (result.mask & DETECTED) != 0
    assert not detected[10, 10]
    grown = grow_diamond(footprints.label_image(image.shape) > 0, int(2.4 * sigma + 0.5))
    np.testing.assert_array_equal(detected, grown)
    assert (result.mask[201, 201] & DETECTED_NEGATIVE) and not (result.mask[201, 201] & DETECTED)
    # the re-estimated background is the plane, and it was subtracted
    assert np.sqrt(np.mean((result.background - plane) ** 2)) < 0.06  # 0.03 DN per cell from the noise
    assert np.abs(result.background - plane).max() < 0.25  # corners: linear extrapolation
    np.testing.assert_array_equal(result.image, (image + plane.astype(np.float32)) - result.background)


def test_footprint_pixels_bbox_and_peaks_are_consistent() -> None:
    rng = np.random.default_rng(8)
    image = star_field(rng, (400, 420), STARS[:1] + [(300.0, 320.0, 3000.0), (302.0, 326.0, 3000.0)], 5.0, 1.5)
    result = detect_sources(image, np.zeros(image.shape, np.int32), 1.5, DetectionConfig(bin_size=100))
    footprints = result.footprints
    source, ys, xs = footprints.all_pixels()
    assert np.all(np.diff(source) >= 0)
    labels = footprints.label_image(image.shape)
    slices = ndimage.find_objects(labels)
    for i in range(len(footprints)):
        py, px = footprints.pixels(i)
        expected_y, expected_x = np.nonzero(labels == i + 1)
        np.testing.assert_array_equal(py, expected_y)
        np.testing.assert_array_equal(px, expected_x)
        np.testing.assert_array_equal(ys[source == i], expected_y)
        x0, y0, x1, y1 = footprints.bbox[i]
        rows, cols = slices[i]
        assert (cols.start, rows.start, cols.stop - 1, rows.stop - 1) == (x0, y0, x1, y1)
        smoothed = smooth_middle(image, 1.5, 31)
        values = smoothed[py - 15, px - 15]
        assert footprints.peak_value[i] == values.max()
        first_max = np.argmax(values)
        assert (footprints.peak_x[i], footprints.peak_y[i]) == (px[first_max], py[first_max])


def test_first_peak_keeps_a_one_pixel_margin_from_the_searched_region() -> None:
    """afw found peaks (no strictly larger 8-neighbour) only 1 px or more inside the searched (smoothed middle)
    region: a star just outside it whose light reaches in does not seed the footprint it shares with a star
    inside; a footprint without any such peak is seeded at its maximum (on the margin)."""
    stars = [(60.0, 12.0, 20000.0), (66.0, 24.0, 3000.0),  # one footprint: bright star in the border band
             (120.0, 12.0, 20000.0),  # alone: its values fall away from the margin row y = 15
             (100.0, 70.0, 5000.0)]  # an ordinary star
    image = star_field(np.random.default_rng(0), (120, 160), stars, 0.0, 1.5)
    config = DetectionConfig(threshold=1.0, threshold_type="value", re_estimate_background=False)
    footprints = detect_sources(image, np.zeros(image.shape, np.int32), 1.5, config).footprints
    assert len(footprints) == 3
    smoothed = smooth_middle(image, 1.5, 31)
    peaks = sorted(zip(footprints.peak_x.tolist(), footprints.peak_y.tolist(), strict=True))
    assert peaks == [(66, 24), (100, 70), (120, 15)]
    for i in range(len(footprints)):
        py, px = footprints.pixels(i)
        assert footprints.peak_value[i] == smoothed[footprints.peak_y[i] - 15, footprints.peak_x[i] - 15]
        if footprints.peak_x[i] == 66:  # the shared footprint's maximum is on the margin row, not its peak
            assert smoothed[py - 15, px - 15].max() > footprints.peak_value[i]
            assert py[np.argmax(smoothed[py - 15, px - 15])] == 15


def test_footprint_runs_are_the_runs_of_the_label_image() -> None:
    rng = np.random.default_rng(14)
    image = star_field(rng, (300, 320), STARS[:1] + [(200.0, 150.0, 3000.0), (203.0, 153.0, 900.0)], 5.0, 1.5)
    footprints = detect_sources(image, np.zeros(image.shape, np.int32), 1.5, DetectionConfig(bin_size=100)).footprints
    assert len(footprints) > 0
    expected = threshold_spans((footprints.label_image(image.shape) > 0).view(np.uint8), np.uint8(1))
    order = np.lexsort(footprints.runs()[::-1])  # runs come footprint by footprint, spans in raster order
    for runs, spans in zip(footprints.runs(), expected, strict=True):
        np.testing.assert_array_equal(runs[order], spans)
    empty = detect_sources(image, np.zeros(image.shape, np.int32), 1.5,
                           DetectionConfig(threshold=1e9, threshold_type="value", bin_size=100)).footprints
    assert [runs.size for runs in empty.runs()] == [0, 0, 0]


def test_include_multiplier_keeps_only_bright_footprints() -> None:
    rng = np.random.default_rng(9)
    image = star_field(rng, (600, 640), STARS, 5.0, 1.5)
    mask = np.zeros(image.shape, np.int32)
    everything = detect_sources(image, mask, 1.5, DetectionConfig(bin_size=150))
    bright = detect_sources(image, mask, 1.5, DetectionConfig(bin_size=150, include_multiplier=10))
    assert bright.threshold == everything.threshold
    peaks = everything.footprints.peak_value
    assert len(bright.footprints) == np.count_nonzero(peaks >= 10 * everything.threshold) < len(peaks)
    assert np.all(bright.footprints.peak_value >= 10 * bright.threshold)
    # only the kept footprints are masked DETECTED
    assert np.count_nonzero(bright.mask & DETECTED) < np.count_nonzero(everything.mask & DETECTED)


def test_negative_footprints_follow_the_include_multiplier_and_custom_bits() -> None:
    rng = np.random.default_rng(12)
    image = star_field(rng, (300, 320), [], 5.0, 1.5)
    image[100:103, 100:103] -= 60.0  # smoothed minimum ~ -6 T: masked at multiplier 1 only
    image[200:203, 200:203] -= 600.0  # ~ -60 T: masked at both
    image[200, 206] -= 40.0  # joins the strong blob's component at threshold: masked with it
    mask = np.zeros(image.shape, dtype=np.int16)
    bits = {"EDGE": 256, "DETECTED": 512, "DETECTED_NEGATIVE": 1024}
    loose = detect_sources(image, mask, 1.5, DetectionConfig(bin_size=100), mask_bits=bits)
    strict = detect_sources(image, mask, 1.5, DetectionConfig(bin_size=100, include_multiplier=10), mask_bits=bits)
    assert loose.mask.dtype == np.int16 and (loose.mask[0, 0] & 256) and not (loose.mask & 16).any()
    assert loose.mask[101, 101] & 1024 and loose.mask[201, 201] & 1024
    assert not strict.mask[101, 101] & 1024 and strict.mask[201, 201] & 1024
    assert strict.mask[200, 206] & 1024
    assert len(loose.footprints) == len(strict.footprints) == 0
    # the whole masks: components of smoothed <= -T reaching <= -multiplier T, grown, at full-frame offsets
    smoothed = smooth_middle(image, 1.5, 31).astype(np.float64)
    labels, _ = ndimage.label(smoothed <= -loose.threshold, structure=np.ones((3, 3), dtype=bool))
    for result, multiplier in ((loose, 1), (strict, 10)):
        negative = np.zeros(image.shape, dtype=bool)
        negative[15:-15, 15:-15] = np.isin(labels, labels[smoothed <= -multiplier * result.threshold]) & (labels > 0)
        np.testing.assert_array_equal((result.mask & 1024) != 0, grow_diamond(negative, int(2.4 * 1.5 + 0.5)))


def test_min_pixels_drops_small_footprints() -> None:
    rng = np.random.default_rng(13)
    image = star_field(rng, (300, 320), [(100.0, 100.0, 30000.0), (200.0, 200.0, 300.0)], 5.0, 1.5)
    everything = detect_sources(image, np.zeros(image.shape, np.int32), 1.5, DetectionConfig(bin_size=100))
    sizes = np.diff(everything.footprints.pixel_offsets)
    cut = int(sizes.max())
    large = detect_sources(image, np.zeros(image.shape, np.int32), 1.5, DetectionConfig(bin_size=100, min_pixels=cut))
    assert len(large.footprints) == 1 and np.diff(large.footprints.pixel_offsets)[0] == cut


def test_value_threshold_and_no_background_re_estimation() -> None:
    rng = np.random.default_rng(10)
    image = star_field(rng, (200, 220), STARS[:1], 5.0, 1.5)
    config = DetectionConfig(threshold=50.0, threshold_type="value", re_estimate_background=False)
    result = detect_sources(image, np.zeros(image.shape, np.int32), 1.5, config)
    assert result.threshold == 50.0 and len(result.footprints) == 1
    assert result.background_model is None and not result.background.any()
    with pytest.raises(ValueError):
        DetectionConfig(threshold_type="variance")


# --- real data (spec §2.1 chain on the demo frames) ------------------------------------------------------

FIELDS = {4192: 300, 6377: 399}
FILTER_INDEX = {"u": 0, "g": 1, "r": 2, "i": 3, "z": 4}
# spec §5: icSrc = first n - 1, src = n
IC_SRC_COUNT = {
    (4192, "u"): 20, (4192, "g"): 65, (4192, "r"): 100, (4192, "i"): 116, (4192, "z"): 55,
    (6377, "u"): 20, (6377, "g"): 71, (6377, "r"): 114, (6377, "i"): 125, (6377, "z"): 56,
}  # fmt: skip
SRC_COUNT = {
    (4192, "u"): 79, (4192, "g"): 444, (4192, "r"): 575, (4192, "i"): 687, (4192, "z"): 267,
    (6377, "u"): 90, (6377, "g"): 468, (6377, "r"): 662, (6377, "i"): 739, (6377, "z"): 263,
}  # fmt: skip


def expected_rows(path, run: int, filter_name: str) -> tuple[np.ndarray, np.ndarray]:
    """(sequence number within the frame, rounded centroid.sdss (x, y)) of the expected rows of one frame."""
    ids = np.loadtxt(path, usecols=(0,), dtype=np.int64)
    centroids = np.loadtxt(path, usecols=(10, 11))
    exposure_id = ((run * 10 + FILTER_INDEX[filter_name]) * 10 + 4) * 10000 + FIELDS[run]
    rows = (ids >> 26) == exposure_id
    return ids[rows] & (2**26 - 1), np.floor(centroids[rows] + 0.5).astype(np.int64)


@pytest.mark.slow
@pytest.mark.parametrize("run", [4192, 6377])
@pytest.mark.parametrize("filter_name", ["u", "g", "r", "i", "z"])
def test_calibration_and_final_detection_on_the_demo_frames(demo_dir, run: int, filter_name: str) -> None:
    from astropy.io import fits
    from scipy.spatial import cKDTree

    from processccd.background import estimate_background

    path = demo_dir / f"input/{run}/40/corr/4/fpC-{run:06d}-{filter_name}4-{FIELDS[run]:04d}.fit.gz"
    image = (fits.getdata(path).astype(np.float32) - 1000.0)[:1361]
    mask = np.zeros(image.shape, dtype=np.int32)
    from processccd.psf import SdssKLPsf, adaptive_gaussian_width

    (psfield,) = sorted(demo_dir.glob(f"input/{run}/*/objcs/*/psField-*.fit"))
    sigma = adaptive_gaussian_width(SdssKLPsf.from_file(psfield, filter_name).compute_image(1024.0, 680.0))
    first = image - estimate_background(image, mask, 0).image
    calibration = detect_sources(first, mask, sigma, DetectionConfig(include_multiplier=10))
    final = detect_sources(calibration.image, calibration.mask, sigma, DetectionConfig())

    assert calibration.n_positive == IC_SRC_COUNT[run, filter_name]
    assert final.n_positive == SRC_COUNT[run, filter_name]
    sequence, centroids = expected_rows(demo_dir / "detected-sources.txt.expected", run, filter_name)
    footprints = final.footprints
    distance, _ = cKDTree(np.c_[footprints.peak_x, footprints.peak_y]).query(centroids)
    assert np.mean(distance <= 1.0) > 0.92  # the rest: faint sources whose centroid wandered off the peak
    # the expected sources' centroids lie in the footprints of their own ids (but for a few faint ones whose
    # centroid wandered into a neighbour)
    label = footprints.label_image(image.shape)[centroids[:, 1], centroids[:, 0]]
    inside = label > 0
    assert np.mean(inside) > 0.9  # i: ~7 % of the centroids (badcentroid peaks, wanderers) lie outside
    assert np.mean(label[inside] == sequence[inside] - IC_SRC_COUNT[run, filter_name]) > 0.99


def test_edge_margin_detects_sources_near_the_edges_and_leaves_the_middle_unchanged():
    """A star 5 px from the left edge is found only with edge_margin (3 px), its footprint touches EDGE
    (flags.pixel.edge, as LSST sets it); the middle star's footprint is the 2013 one, pixel for pixel."""
    from processccd.detection import smooth_to_edges

    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:100, :120]
    image = rng.normal(0.0, 3.0, yy.shape)
    for x, y in ((5.2, 50.3), (60.4, 48.8)):
        image += 3000.0 / (2 * np.pi * 1.5**2) * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / 1.5**2)
    image = image.astype(np.float32)
    mask = np.zeros(image.shape, np.uint16)
    base = DetectionConfig(re_estimate_background=False)
    default = detect_sources(image, mask, 1.5, base)
    near = detect_sources(image, mask, 1.5, dataclasses.replace(base, edge_margin=3))
    assert len(default.footprints) == 1 and len(near.footprints) == 2
    edge_star = int(np.argmin(near.footprints.peak_x))
    assert near.footprints.peak_x[edge_star] == 5 and near.footprints.peak_y[edge_star] == 50
    flags = pixel_flags(near.mask, *near.footprints.pixels(edge_star), 5.2, 50.3)
    assert flags["edge"]
    middle = 1 - edge_star
    for a, b in zip(near.footprints.pixels(middle), default.footprints.pixels(0), strict=True):
        np.testing.assert_array_equal(a, b)
    # the renormalised smoothing, against a brute-force normalised 2-d correlation
    kernel = np.outer(*(2 * [np.exp(-0.5 * (np.arange(31) - 15) ** 2 / 1.5**2)]))
    padded = np.pad(image.astype(np.float64), 15)
    ones = np.pad(np.ones(image.shape), 15)
    for y, x in ((3, 3), (50, 4), (96, 60), (10, 116)):
        window = np.s_[y:y + 31, x:x + 31]
        expected = np.sum(padded[window] * kernel) / np.sum(ones[window] * kernel)
        smoothed = smooth_to_edges(image, 1.5, 31, 3, np.zeros((70, 90), np.float32))
        assert smoothed[y - 3, x - 3] == pytest.approx(expected, rel=1e-5, abs=1e-4)
