"""flux.sinc: coefficient image, flat and ramp images, stars, noise pulls, batch vs single."""

from __future__ import annotations

import numpy as np
import pytest
from photutils.aperture import CircularAperture, aperture_photometry

from processccd.lanczos import lanczos_shift_matrices, shift_image
from processccd.meas.aperture_flux import sinc_coefficients, sinc_flux_many
from reference_impl.aperture_flux import shifted_sinc_coefficients, sinc_flux

POSITIONS = [(32.0, 32.0), (32.3, 31.7), (31.5, 32.49), (32.9, 31.1)]


def test_coefficients_sum_to_aperture_area() -> None:
    coefficients = sinc_coefficients(7.0)
    assert coefficients.shape == (31, 31)
    assert coefficients.sum() == pytest.approx(49 * np.pi, rel=1e-12)
    np.testing.assert_allclose(coefficients, coefficients.T, atol=1e-13)
    np.testing.assert_allclose(coefficients, coefficients[::-1, ::-1], atol=1e-13)
    assert coefficients[15, 15] == pytest.approx(1.0, abs=0.1)  # inside the aperture ≈ 1
    assert abs(coefficients[15, 0]) < 0.1  # well outside ≈ 0
    assert sinc_coefficients(3.0).sum() == pytest.approx(9 * np.pi, rel=1e-12)


def test_shift_matrices_equal_shift_image() -> None:
    rng = np.random.default_rng(0)
    fractions = np.array([0.0, 0.3, -0.5, 0.4999, -0.123])
    matrices = lanczos_shift_matrices(fractions, 31)
    for fraction, matrix in zip(fractions, matrices, strict=True):
        values = rng.normal(size=(31, 31))
        np.testing.assert_allclose(values @ matrix.T, shift_image(values, fraction, 0.0), atol=1e-14)
        np.testing.assert_allclose(matrix @ values, shift_image(values, 0.0, fraction), atol=1e-14)


@pytest.mark.parametrize(("x", "y"), POSITIONS)
def test_flat_and_ramp_images_match_circular_aperture(x: float, y: float) -> None:
    flat = np.ones((64, 64))
    flux, err = sinc_flux(flat, flat, x, y)
    assert flux == pytest.approx(49 * np.pi, rel=0.01)
    assert err == pytest.approx(np.sqrt(np.sum(shifted_sinc_coefficients(7.0, x, y) ** 2)), rel=1e-12)
    yy, xx = np.mgrid[:64, :64]
    ramp = 10.0 + 0.3 * xx - 0.2 * yy
    reference = aperture_photometry(ramp, CircularAperture((x, y), 7.0))["aperture_sum"][0]
    assert sinc_flux(ramp, flat, x, y)[0] == pytest.approx(reference, rel=0.01)


@pytest.mark.parametrize(("x", "y"), POSITIONS)
@pytest.mark.parametrize("sigma", [1.0, 1.3, 2.0])
def test_bright_star_gives_flux_within_aperture(x: float, y: float, sigma: float) -> None:
    yy, xx = np.mgrid[:64, :64]
    image = 1e5 * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / sigma**2) / (2 * np.pi * sigma**2)
    enclosed = 1e5 * (1 - np.exp(-0.5 * 49 / sigma**2))
    assert sinc_flux(image, np.ones_like(image), x, y)[0] == pytest.approx(enclosed, rel=1e-3)
    photutils_flux = aperture_photometry(image, CircularAperture((x, y), 7.0))["aperture_sum"][0]
    assert sinc_flux(image, np.ones_like(image), x, y)[0] == pytest.approx(photutils_flux, rel=2e-3)


def test_noise_pulls_and_batch() -> None:
    rng = np.random.default_rng(11)
    spacing, grid = 33, 18
    centres = 16 + spacing * np.arange(grid)
    ys, xs = np.meshgrid(centres, centres, indexing="ij")
    xs = xs.ravel() + rng.uniform(-0.5, 0.5, xs.size)
    ys = ys.ravel() + rng.uniform(-0.5, 0.5, ys.size)
    shape = (spacing * grid, spacing * grid)
    variance = rng.uniform(20.0, 30.0, size=shape)
    sky = 7.0
    image = sky + rng.normal(size=shape) * np.sqrt(variance)
    flux, err = sinc_flux_many(image, variance, xs, ys)
    areas = [shifted_sinc_coefficients(7.0, x, y).sum() for x, y in zip(xs, ys, strict=True)]
    expected = sky * np.array(areas)
    pulls = (flux - expected) / err
    assert abs(pulls.mean()) < 4 / np.sqrt(len(pulls))
    assert 0.8 < pulls.std(ddof=1) < 1.2
    for i in range(0, len(xs), 37):
        np.testing.assert_allclose(sinc_flux(image, variance, xs[i], ys[i]), (flux[i], err[i]), rtol=1e-12)


def test_edge_and_outside_sources() -> None:
    image = np.ones((40, 50))
    xs = np.array([1.3, 25.0, -100.0])
    ys = np.array([20.0, 38.6, 20.0])
    flux, err = sinc_flux_many(image, image, xs, ys)
    for i in range(2):
        assert flux[i] == pytest.approx(sinc_flux(image, image, xs[i], ys[i])[0], rel=1e-12)
        assert 0 < flux[i] < 0.7 * 49 * np.pi  # roughly half the aperture is off the image
    assert flux[2] == 0.0 and err[2] == 0.0
