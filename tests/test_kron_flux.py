"""Kron flux (sep) against the analytic Kron radius and enclosed flux of Gaussian sources."""

from __future__ import annotations

import math

import numpy as np
import pytest

from processccd.meas.kron_flux import KRON_FACTOR, MIN_RADIUS, ellipse_from_moments, kron_fluxes
from processccd.meas.noise_replacement import NoiseReplacer


def gaussian(shape, x, y, sx, sy, angle, flux):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    c, s = math.cos(angle), math.sin(angle)
    u = c * (xx - x) + s * (yy - y)
    v = -s * (xx - x) + c * (yy - y)
    # sampled at 5x5 points per pixel so that the pixel values are the pixel integrals to < 1e-4
    total = np.zeros(shape)
    for ox in np.linspace(-0.4, 0.4, 5):
        for oy in np.linspace(-0.4, 0.4, 5):
            uu, vv = u + c * ox + s * oy, v - s * ox + c * oy
            total += np.exp(-0.5 * (uu**2 / sx**2 + vv**2 / sy**2))
    return flux * total / 25 / (2 * math.pi * sx * sy)


def test_ellipse_from_moments_of_a_rotated_ellipse():
    angle, a, b = 0.6, 3.0, 1.5
    c, s = math.cos(angle), math.sin(angle)
    ixx = a * a * c * c + b * b * s * s
    iyy = a * a * s * s + b * b * c * c
    ixy = (a * a - b * b) * s * c
    got = ellipse_from_moments(np.array([ixx]), np.array([iyy]), np.array([ixy]))
    np.testing.assert_allclose([v[0] for v in got], [a, b, angle])


@pytest.mark.parametrize(("sx", "sy", "angle"), [(2.0, 2.0, 0.0), (4.0, 2.0, 0.5)])
def test_kron_radius_and_flux_of_a_gaussian(sx, sy, angle):
    """Kron radius of a Gaussian in units of its sigma ellipse: sqrt(pi/2) (1.2533; the 6-sigma window cuts
    1e-7 of it) — of the pixel-integrated Gaussian, whose variance is sigma^2 + 1/12 per axis; 2.5 of it
    is 3.13 < 3.5: the aperture is the minimum, 3.5 sigma, which encloses 1 - exp(-3.5^2 / 2) of the flux
    (in units of the pixel-integrated sigma: 99.75 %)."""
    image = gaussian((120, 140), 70.3, 60.6, sx, sy, angle, 10000.0).astype(np.float32)
    c, s = math.cos(angle), math.sin(angle)
    ixx = sx * sx * c * c + sy * sy * s * s
    iyy = sx * sx * s * s + sy * sy * c * c
    ixy = (sx * sx - sy * sy) * s * c
    result = kron_fluxes(image, np.full(image.shape, 4.0, np.float32), np.array([70.3]), np.array([60.6]),
                         np.array([ixx]), np.array([iyy]), np.array([ixy]))
    pixel_factor = math.sqrt(1 + 1 / (12 * sx * sy))
    assert result.radius[0] == pytest.approx(math.sqrt(math.pi / 2) * pixel_factor, rel=0.003)
    assert KRON_FACTOR * result.radius[0] < MIN_RADIUS
    enclosed = 1 - math.exp(-0.5 * (MIN_RADIUS / pixel_factor) ** 2)
    assert result.flux[0] == pytest.approx(10000.0 * enclosed, rel=0.002)
    area = math.pi * sx * sy * MIN_RADIUS**2
    assert result.flux_err[0] == pytest.approx(math.sqrt(4.0 * area), rel=0.02)
    assert not result.flag[0]


def test_minimum_radius_and_unusable_shapes():
    """A sharp spike measured with a broader ellipse has a small Kron radius: the aperture is 3.5 (a, b); a
    source without moments is flagged, its flux NaN."""
    image = np.zeros((60, 60), np.float32)
    image[30, 30] = 1000.0
    image[30, 33] = 1.0  # 3 px from the centre: inside the 3.5-px minimum aperture, not inside 2.5 x the Kron radius
    result = kron_fluxes(image, np.ones(image.shape, np.float32), np.array([30.0, 30.0]), np.array([30.0, 30.0]),
                         np.array([1.0, np.nan]), np.array([1.0, 1.0]), np.array([0.0, 0.0]))
    assert KRON_FACTOR * result.radius[0] < MIN_RADIUS
    assert result.flux[0] == pytest.approx(1001.0)
    assert np.isnan(result.flux[1]) and result.flag[1]


def test_neighbours_replaced_by_noise_are_not_counted():
    """A faint source 20 px from a bright one, within its 6 (a, b) Kron window: measured with the neighbour's
    footprint replaced by noise (sd ~0: the image is noiseless outside the sources) it has the flux of the
    same source alone, to the neighbour's light inside its own footprint (x < 52, 3.2 neighbour sigmas
    away); without replacement the neighbour inflates its Kron radius and flux."""
    faint = gaussian((80, 120), 40.0, 40.0, 3.0, 3.0, 0.0, 10000.0)
    image = (faint + gaussian((80, 120), 60.0, 40.0, 2.5, 2.5, 0.0, 100000.0)).astype(np.float32)
    yy, xx = np.mgrid[:80, :120]
    near = np.hypot(xx - 50.0, yy - 40.0) < 30
    index = (xx[near] >= 52).astype(int)
    replacer = NoiseReplacer(image, index, yy[near], xx[near], seed=2)  # image: footprints noised in place
    ones = np.ones((80, 120), np.float32)
    args = (np.array([40.0, 60.0]), np.array([40.0, 40.0]), np.array([9.0, 6.25]), np.array([9.0, 6.25]), np.zeros(2))
    result = kron_fluxes(image, ones, *args, replacer.insert, replacer.remove)
    lone = kron_fluxes(faint.astype(np.float32), ones, *(v[:1] for v in args))
    assert result.flux[0] == pytest.approx(lone.flux[0], rel=0.005)
    replacer.end()
    unreplaced = kron_fluxes(image, ones, *(v[:1] for v in args))
    assert unreplaced.flux[0] > 1.5 * lone.flux[0]
