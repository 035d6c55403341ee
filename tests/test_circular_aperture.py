"""Circular aperture fluxes: exact overlap against photutils, noise replacement, flags, and in MeasurementTask."""

from __future__ import annotations

import numpy as np
import pytest
from photutils.aperture import CircularAperture, aperture_photometry
from photutils.geometry import circular_overlap_grid

from processccd.image import mask_bit
from processccd.meas.circular_aperture import LSST_RADII, circular_aperture_fluxes, pixel_circle_overlap
from processccd.meas.noise_replacement import NoiseReplacer
from processccd.tasks.measurement import MeasurementConfig, MeasurementTask
from test_measurement import synthetic_exposure


@pytest.mark.parametrize("radius", [0.3, 1.0, 3.0, 4.5, 17.0, 70.0])
@pytest.mark.parametrize("centre", [(0.0, 0.0), (0.3, -0.27), (0.5, 0.5), (-0.11, 0.77)])
def test_pixel_overlap_equals_photutils_exact_grid(radius, centre):
    cx, cy = centre
    half = int(np.ceil(radius)) + 2
    grid = circular_overlap_grid(-half - 0.5 - cx, half + 0.5 - cx, -half - 0.5 - cy, half + 0.5 - cy,
                                 2 * half + 1, 2 * half + 1, radius, 1, 1)
    oy, ox = np.mgrid[-half:half + 1, -half:half + 1]
    np.testing.assert_allclose(pixel_circle_overlap(ox - cx, oy - cy, radius), grid, atol=1e-10)


def test_sums_and_errors_equal_photutils_exact_photometry():
    """sep's exact-overlap sums (the implementation) against photutils.aperture_photometry(method='exact'), the
    independent truth: stars on a sloped sky with a varying variance, centres inside, across the edges and
    off the image (photutils gives NaN where the circle's bounding box misses the image)."""
    rng = np.random.default_rng(11)
    height, width = 160, 230
    yy, xx = np.mgrid[:height, :width]
    image = 50.0 + 0.2 * xx - 0.1 * yy + rng.normal(0.0, 3.0, (height, width))
    x = np.array([60.3, 120.77, 171.5, 2.2, 227.9, 115.0, -30.4, 115.25, 300.0, 81.0])
    y = np.array([70.6, 80.01, 40.5, 90.8, 3.3, 158.6, 60.0, -12.7, 80.0, 159.5])
    for cx, cy in zip(x, y, strict=True):
        image += 5e4 / (2 * np.pi * 1.5**2) * np.exp(-0.5 * ((xx - cx) ** 2 + (yy - cy) ** 2) / 1.5**2)
    image = image.astype(np.float32)
    variance = (9.0 + 0.01 * np.maximum(image, 0.0)).astype(np.float32)
    mask = np.zeros(image.shape, np.uint16)
    result = circular_aperture_fluxes(image, variance, mask, x, y, LSST_RADII)
    for k, radius in enumerate(LSST_RADII):
        table = aperture_photometry(image, CircularAperture(np.column_stack([x, y]), radius),
                                    error=np.sqrt(variance), method="exact")
        expected, expected_err = np.asarray(table["aperture_sum"]), np.asarray(table["aperture_sum_err"])
        np.testing.assert_allclose(result.flux[k], expected, rtol=1e-9, atol=0.0, equal_nan=True)
        np.testing.assert_allclose(result.flux_err[k], expected_err, rtol=1e-9, atol=0.0, equal_nan=True)
    # the cases the comparison must hold: NaN only for the circles that miss the image, partial circles
    assert np.isnan(result.flux[:, 8]).all()  # 70 px beyond the right edge, radius <= 70
    assert np.isnan(result.flux[:7, 6]).all() and np.isfinite(result.flux[7:, 6]).all()  # x = -30.4: r >= 35 reach in
    assert np.isfinite(result.flux[:, :6]).all()


def two_sources(seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A noisy image with two overlapping blobs and their (non-overlapping) footprints."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:80, :100]
    image = rng.normal(0.0, 2.0, yy.shape)
    for x, y in ((40.3, 40.2), (52.7, 41.6)):
        image += 3000.0 / (2 * np.pi * 2.0**2) * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / 2.0**2)
    left = (np.hypot(xx - 40.3, yy - 40.2) < 6) & (xx < 46)
    right = (np.hypot(xx - 52.7, yy - 41.6) < 6) & (xx >= 46)
    index = np.concatenate([np.zeros(left.sum(), int), np.ones(right.sum(), int)])
    ys = np.concatenate([np.nonzero(left)[0], np.nonzero(right)[0]])
    xs = np.concatenate([np.nonzero(left)[1], np.nonzero(right)[1]])
    return image.astype(np.float32), index, ys, xs


def test_each_source_sees_its_own_footprint_and_noise_elsewhere():
    image, index, ys, xs = two_sources()
    variance = np.full(image.shape, 4.0, np.float32)
    mask = np.zeros(image.shape, np.uint16)
    x, y = np.array([40.3, 52.7]), np.array([40.2, 41.6])
    noised = image.copy()
    replacer = NoiseReplacer(noised, index, ys, xs, seed=5)
    result = circular_aperture_fluxes(noised, variance, mask, x, y, (3.0, 9.0, 17.0), replacer.footprint_deltas())
    for i in range(2):
        replacer.insert(i)  # the image source i is measured on, made explicitly
        for k, radius in enumerate((3.0, 9.0, 17.0)):
            table = aperture_photometry(noised, CircularAperture([(x[i], y[i])], radius),
                                        error=np.sqrt(variance), method="exact")
            assert result.flux[k, i] == pytest.approx(float(table["aperture_sum"][0]), rel=1e-9, abs=1e-6)
            assert result.flux_err[k, i] == pytest.approx(float(table["aperture_sum_err"][0]), rel=1e-9)
        replacer.remove(i)
    # the 17-px aperture of source 0 holds source 1's position: replaced by noise, it is not counted
    assert result.flux[2, 0] < 3300.0


def test_flat_image_gives_the_circle_area_and_flags_off_image_and_masked_pixels():
    image = np.ones((200, 300), np.float32)
    variance = np.full(image.shape, 2.0, np.float32)
    mask = np.zeros(image.shape, np.uint16)
    mask[100, 160] = mask_bit("SAT")  # 10 px right of the first source: only in its apertures of radius >= 9.5
    mask[20, 20] = mask_bit("EDGE")  # EDGE is not a masked-pixel plane
    x, y = np.array([150.2, 10.0, np.nan]), np.array([100.0, 20.0, 50.0])
    result = circular_aperture_fluxes(image, variance, mask, x, y, LSST_RADII)
    inside = ~result.off_image[:, 0]
    np.testing.assert_allclose(result.flux[inside, 0], np.pi * np.array(LSST_RADII)[inside] ** 2, rtol=1e-9)
    np.testing.assert_allclose(result.flux_err[inside, 0], np.sqrt(2.0 * np.pi * np.array(LSST_RADII)[inside] ** 2))
    assert list(result.off_image[:, 0]) == [r > 99.5 for r in LSST_RADII]
    assert list(result.masked[:, 0]) == [r > 9.7 - 0.5 + 0.0 for r in LSST_RADII]  # nearest point 9.3 px away
    assert list(result.off_image[:, 1]) == [r > 10.5 for r in LSST_RADII]
    assert not result.masked[:, 1].any()
    assert np.isnan(result.flux[:, 2]).all() and result.off_image[:, 2].all()


def test_measurement_task_fills_every_radius_and_recovers_star_fluxes():
    exposure, centres = synthetic_exposure(seed=2, n_side=4)
    from processccd.detection import DetectionConfig, detect_sources
    from processccd.meas.shape import psf_adaptive_sigma

    sigma = psf_adaptive_sigma(exposure.psf.compute_image(200, 200))
    detection = detect_sources(exposure.image, exposure.mask, sigma, DetectionConfig(re_estimate_background=False))
    config = MeasurementConfig(model_fluxes=False, circular_aperture_radii=(6.0, 12.0))
    cols = MeasurementTask(config).run(exposure, detection.footprints, 1)
    assert len(cols["id"]) == len(centres)
    # Gaussian stars of sigma 1.4 px: 12 px holds all of the flux, 6 px 1 - exp(-9.2); sky noise in 12 px is
    # 5 sqrt(pi 144) = 106 DN (0.5 %)
    np.testing.assert_allclose(cols["flux.circular.12_0"], 20000.0, rtol=0.025)
    assert np.median(cols["flux.circular.12_0"]) == pytest.approx(20000.0, rel=0.004)
    np.testing.assert_allclose(cols["flux.circular.6_0"] / cols["flux.circular.12_0"], 1.0, atol=0.02)
    assert np.all(cols["flux.circular.12_0.err"] > 0)
    assert not cols["flux.circular.12_0.flags.offimage"].any()


def test_masked_flag_is_the_nearest_masked_square_closer_than_the_radius():
    """Against the brute-force distance from each centre to every masked pixel's square, for centres placed
    at all distances from a few masked pixels, many in the band where the nearest centre alone cannot decide."""
    rng = np.random.default_rng(11)
    mask = np.zeros((120, 160), np.uint16)
    masked_pixels = [(30, 40), (31, 40), (80, 100), (60, 20), (100, 150)]
    for row, column in masked_pixels:
        mask[row, column] = mask_bit("CR")
    mask[10, 10] = mask_bit("EDGE")  # not a masked-pixel plane
    anchor = np.array(masked_pixels, dtype=np.float64)[rng.integers(0, 5, 400)]
    angle, distance = rng.uniform(0, 2 * np.pi, 400), rng.uniform(2.0, 14.0, 400)
    x = anchor[:, 1] + distance * np.cos(angle)
    y = anchor[:, 0] + distance * np.sin(angle)
    radii = (3.0, 4.5, 6.0, 9.0, 12.0)
    result = circular_aperture_fluxes(np.zeros(mask.shape, np.float32), np.ones(mask.shape, np.float32), mask, x, y,
                                      radii)
    rows, columns = np.array(masked_pixels, dtype=np.float64).T
    gap_x = np.maximum(np.abs(columns[None, :] - x[:, None]) - 0.5, 0.0)
    gap_y = np.maximum(np.abs(rows[None, :] - y[:, None]) - 0.5, 0.0)
    nearest_square = np.hypot(gap_x, gap_y).min(axis=1)
    expected = np.array([nearest_square < r for r in radii])
    np.testing.assert_array_equal(result.masked, expected)
    centre = np.hypot(columns[None, :] - x[:, None], rows[None, :] - y[:, None]).min(axis=1)
    undecided = np.array([(centre - 0.7072 < r) & (centre - 0.5 >= r) for r in radii]).any(axis=0)
    assert undecided.sum() >= 20
