"""multishapelet model fluxes on synthetic sources of known flux and shape."""

from __future__ import annotations

import math

import numpy as np
import pytest

from processccd.meas.classification import extendedness
from processccd.meas.model_flux import (
    DE_VAUCOULEURS,
    EXPONENTIAL,
    ModelFluxConfig,
    PsfModelCache,
    _GaussianSet,
    fit_psf_model,
    initial_ellipse,
    model_flux_psf_factors,
    model_fluxes,
)
from processccd.meas.psf_flux import psf_flux
from processccd.psf import GaussianPsf, Psf

SKY_SIGMA = 5.0
SHAPE = (101, 121)  # rows, columns
EXP_SCALE = 1.67835  # SDSS exponential: exp(-1.67835 (r / r_e - 1))


class EllipticalGaussianPsf(Psf):
    """An elliptical Gaussian PSF (same everywhere) to exercise the Gauss-Hermite terms."""

    def __init__(self, sxx: float, sxy: float, syy: float) -> None:
        self.inverse = np.linalg.inv(np.array([[sxx, sxy], [sxy, syy]]))

    def kernel(self, x: float, y: float) -> np.ndarray:
        grid = np.arange(self.size) - self.size // 2
        yy, xx = np.meshgrid(grid, grid, indexing="ij")
        a, b, c = self.inverse[0, 0], self.inverse[0, 1], self.inverse[1, 1]
        return np.exp(-0.5 * (a * xx * xx + 2 * b * xx * yy + c * yy * yy))


def _footprint(image: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.nonzero(image > level)
    return ys, xs


def _render_exponential(flux: float, x: float, y: float, r_e: float, axis_ratio: float, angle: float,
                        psf_sigma: float, oversample: int = 7) -> np.ndarray:
    """A PSF-convolved pure exponential galaxy, brute force: the profile sampled on a fine grid, integrated
    into pixels, convolved with a circular Gaussian by FFT, normalised to `flux` (no mixture involved)."""
    height, width = SHAPE
    step = 1.0 / oversample
    fy = (np.arange(height * oversample) + 0.5) * step - 0.5
    fx = (np.arange(width * oversample) + 0.5) * step - 0.5
    gy, gx = np.meshgrid(fy - y, fx - x, indexing="ij")
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    u = cos_a * gx + sin_a * gy
    v = (-sin_a * gx + cos_a * gy) / axis_ratio
    fine = np.exp(-EXP_SCALE * np.hypot(u, v) / r_e)
    pixels = fine.reshape(height, oversample, width, oversample).sum(axis=(1, 3))
    ky = np.fft.fftfreq(height)[:, None]
    kx = np.fft.fftfreq(width)[None, :]
    transfer = np.exp(-2.0 * math.pi**2 * psf_sigma**2 * (kx * kx + ky * ky))
    # the pixel response is already in `pixels`; convolve with the (pixel-sampled) Gaussian PSF
    convolved = np.real(np.fft.ifft2(np.fft.fft2(pixels) * transfer))
    return convolved * (flux / convolved.sum())


def _noisy(truth: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = (truth + rng.normal(0.0, SKY_SIGMA, truth.shape)).astype(np.float32)
    variance = np.full(truth.shape, SKY_SIGMA**2, dtype=np.float32)
    mask = np.zeros(truth.shape, dtype=np.int32)
    return image, variance, mask


def _star(psf: Psf, flux: float, x: float, y: float) -> np.ndarray:
    truth = np.zeros(SHAPE)
    stamp = psf.unit_sum_image(x, y) * flux
    half = stamp.shape[0] // 2
    ix, iy = math.floor(x + 0.5), math.floor(y + 0.5)
    truth[iy - half : iy + half + 1, ix - half : ix + half + 1] = stamp
    return truth


def _scaled(psf: Psf, x: float, y: float, result) -> tuple[float, float, float, float]:
    """Fluxes scaled by p_psf / p_X (what the measurement task stores before aperture correction)."""
    factors = model_flux_psf_factors(psf, x, y)
    p_psf = psf.compute_image(x, y).sum()
    return (result.exp.flux * p_psf / factors.exp, result.dev.flux * p_psf / factors.dev,
            result.combo_flux * p_psf / factors.combo, result.exp.flux_err * p_psf / factors.exp)


@pytest.mark.parametrize("psf", [GaussianPsf(1.4), EllipticalGaussianPsf(2.2, 0.4, 1.6)], ids=["round", "elliptical"])
def test_psf_model_reproduces_psf_image(psf: Psf) -> None:
    model = fit_psf_model(psf, 50.3, 40.6)
    image = psf.unit_sum_image(50.3, 40.6)
    grid = np.arange(31) - 15.0
    dy, dx = np.meshgrid(grid + 0.4, grid - 0.3, indexing="ij")  # offsets from (50.3, 40.6): 41 - 40.6, 50 - 50.3
    basis = _GaussianSet(model.covariances, dx.ravel(), dy.ravel()).derivative_basis()
    rendered = np.einsum("kj,kjn->n", model.coefficients, basis).reshape(31, 31)
    assert np.max(np.abs(rendered - image)) < 5e-3 * image.max()
    assert model.coefficients[:, 0].sum() == pytest.approx(1.0, abs=0.005)  # derivative terms integrate to 0
    assert 0.8 < model.gaussian_fluxes.sum() < 1.0


def test_point_source_model_fluxes_match_psf_flux() -> None:
    psf = EllipticalGaussianPsf(2.0, 0.3, 1.7)
    x, y, flux = 60.3, 50.7, 2.0e5
    image, variance, mask = _noisy(_star(psf, flux, x, y), seed=1)
    ys, xs = _footprint(_star(psf, flux, x, y), 50.0)
    result = model_fluxes(image, variance, mask, ys, xs, x, y, 2.0, 0.3, 1.7, True, psf)
    exp_flux, dev_flux, combo_flux, _ = _scaled(psf, x, y, result)
    psf_value = psf_flux(image, variance, x, y, psf)[0]
    assert exp_flux / psf_value == pytest.approx(1.0, abs=0.01)
    assert dev_flux / psf_value == pytest.approx(1.0, abs=0.01)
    assert combo_flux / psf_value == pytest.approx(1.0, abs=0.01)
    assert not result.exp.flag and not result.dev.flag and not result.combo_flag
    assert extendedness(psf_value, combo_flux) == 0.0


def test_exponential_galaxy_flux_and_size() -> None:
    psf = GaussianPsf(1.5)
    x, y, flux, r_e = 60.2, 50.4, 3.0e4, 4.0
    truth = _render_exponential(flux, x, y, r_e, axis_ratio=0.6, angle=0.5, psf_sigma=1.5)
    image, variance, mask = _noisy(truth, seed=2)
    ys, xs = _footprint(truth, 2.0 * SKY_SIGMA)
    result = model_fluxes(image, variance, mask, ys, xs, x, y, 10.0, 3.0, 7.0, True, psf)
    # raw flux: the mixture approximates the SDSS exponential, softened and cut at 3-4 r_e (~1.5% of the flux)
    assert result.exp.flux == pytest.approx(flux, abs=4.0 * result.exp.flux_err + 0.03 * flux)
    qxx, qxy, qyy = result.exp.ellipse
    assert (qxx * qyy - qxy * qxy) ** 0.25 == pytest.approx(r_e * math.sqrt(0.6), rel=0.1)
    assert result.combo_flux == pytest.approx(result.exp.flux, rel=0.05)
    _, _, combo_flux, _ = _scaled(psf, x, y, result)
    psf_value = psf_flux(image, variance, x, y, psf)[0]
    assert extendedness(psf_value, combo_flux) == 1.0


def test_mixture_rendered_galaxy_flux_within_errors() -> None:
    """A galaxy drawn from the PSF-convolved exponential mixture at pixel centres: raw flux within 3 sigma."""
    psf = GaussianPsf(1.3)
    x, y, flux = 58.6, 49.3, 8.0e3
    q = np.array([[9.0, 2.0], [2.0, 5.0]])
    truth = np.zeros(SHAPE)
    gy, gx = np.mgrid[: SHAPE[0], : SHAPE[1]].astype(float)
    dx, dy = gx - x, gy - y
    for amplitude, var in zip(EXPONENTIAL.fluxes, EXPONENTIAL.variances, strict=True):
        c = var * q + 1.3**2 * np.eye(2)
        inv = np.linalg.inv(c)
        expo = inv[0, 0] * dx * dx + 2 * inv[0, 1] * dx * dy + inv[1, 1] * dy * dy
        truth += flux * amplitude * np.exp(-0.5 * expo) / (2 * math.pi * math.sqrt(np.linalg.det(c)))
    image, variance, mask = _noisy(truth, seed=3)
    ys, xs = _footprint(truth, 2.0 * SKY_SIGMA)
    result = model_fluxes(image, variance, mask, ys, xs, x, y, 8.0, 2.0, 5.0, True, psf)
    # the fitted PSF model integrates to the unit-sum PSF image to ~0.3%
    assert abs(result.exp.flux - flux) < 3.0 * result.exp.flux_err + 0.005 * flux
    assert result.exp.ellipse[0] == pytest.approx(9.0, rel=0.25)


def test_region_rules_give_nan() -> None:
    psf = GaussianPsf(1.4)
    x, y, flux = 60.0, 50.0, 5.0e4
    truth = _star(psf, flux, x, y)
    image, variance, mask = _noisy(truth, seed=4)
    ys, xs = _footprint(truth, 50.0)
    mask[45:56, 55:66] = 4  # INTRP over the core: far more than 10% of the fit pixels
    result = model_fluxes(image, variance, mask, ys, xs, x, y, 2.0, 0.0, 2.0, True, psf)
    assert math.isnan(result.exp.flux) and math.isnan(result.dev.flux) and math.isnan(result.combo_flux)
    mask[:] = 0
    edge_result = model_fluxes(image, variance, mask, ys, xs - 55, x - 55, y, 2.0, 0.0, 2.0, True, psf)
    assert math.isnan(edge_result.exp.flux)


def test_failed_shape_starts_from_half_psf_ellipse() -> None:
    model = fit_psf_model(GaussianPsf(1.5), 40.0, 40.0)
    config = ModelFluxConfig()
    for profile in (EXPONENTIAL, DE_VAUCOULEURS):
        start = initial_ellipse(profile, model, math.nan, math.nan, math.nan, False, config)
        np.testing.assert_allclose(start, 0.25 * model.inner)
        big = initial_ellipse(profile, model, 30.0, 0.0, 30.0, True, config)
        assert big[0, 0] > model.inner[0, 0]


def test_cache_factors_match_direct_fit() -> None:
    psf = EllipticalGaussianPsf(2.0, 0.2, 1.5)
    cache = PsfModelCache(psf, cell_size=64)
    direct = model_flux_psf_factors(psf, 100.3, 80.8)
    cached = cache.factors(100.3, 80.8)
    assert cached.exp == pytest.approx(direct.exp, rel=3e-3)  # sub-pixel phase effects of the Lanczos shift
    assert cached.dev == pytest.approx(direct.dev, rel=3e-3)
