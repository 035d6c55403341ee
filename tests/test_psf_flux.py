"""flux.psf on synthetic stars of known flux."""

from __future__ import annotations

import numpy as np
import pytest

from processccd.meas.psf_flux import psf_flux_many, psf_images_at
from reference_impl.psf import GaussianPsf
from reference_impl.psf_flux import psf_flux

SIGMA = 1.3
SPACING = 33
GRID = 18  # 18 x 18 = 324 stars


def gaussian_star(
    shape: tuple[int, int], x: float, y: float, flux: float, sigma: float = SIGMA
) -> np.ndarray:
    """A circular Gaussian of total `flux` sampled at the pixel centres."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return flux * np.exp(-0.5 * ((xx - x) ** 2 + (yy - y) ** 2) / sigma**2) / (2 * np.pi * sigma**2)


def star_grid(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Star positions on a grid of cells, each with a random sub-pixel offset."""
    centres = 16 + SPACING * np.arange(GRID)
    ys, xs = np.meshgrid(centres, centres, indexing="ij")
    xs = xs.ravel() + rng.uniform(-0.5, 0.5, xs.size)
    ys = ys.ravel() + rng.uniform(-0.5, 0.5, ys.size)
    return xs, ys


def test_psf_shaped_star_gives_exact_flux() -> None:
    psf = GaussianPsf(SIGMA)
    x, y = 40.37, 35.81
    weights = psf.compute_image(x, y)
    image = np.zeros((80, 90))
    X, Y = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
    image[Y - 15 : Y + 16, X - 15 : X + 16] = 1234.5 * weights / weights.sum()
    flux, err, factor = psf_flux(image, np.full(image.shape, 4.0), x, y, psf)
    assert flux == pytest.approx(1234.5, rel=1e-12)
    assert factor == pytest.approx(weights.sum(), rel=1e-14)
    assert err == pytest.approx(2.0 * weights.sum() / np.sqrt(np.sum(weights**2)), rel=1e-12)


@pytest.mark.parametrize(("x", "y"), [(50.0, 50.0), (50.3, 49.6), (49.5, 50.49), (50.77, 50.23)])
def test_analytic_gaussian_star(x: float, y: float) -> None:
    image = gaussian_star((100, 100), x, y, 1.0e4)
    flux, _, factor = psf_flux(image, np.ones_like(image), x, y, GaussianPsf(SIGMA))
    # the Lanczos-shifted weight image is not exactly the sampled Gaussian: up to ~0.25% low (as in 2013)
    assert flux == pytest.approx(1.0e4, rel=3e-3)
    assert factor == pytest.approx(2 * np.pi * SIGMA**2, rel=1e-3)


def test_pulls_over_many_realisations() -> None:
    rng = np.random.default_rng(42)
    xs, ys = star_grid(rng)
    shape = (SPACING * GRID, SPACING * GRID)
    true_flux = 500.0
    sky_variance = 25.0
    model = sum(gaussian_star(shape, x, y, true_flux) for x, y in zip(xs, ys, strict=True))
    variance = sky_variance + model  # sky + source photon noise, known exactly
    image = model + rng.normal(size=shape) * np.sqrt(variance)
    psf_images = psf_images_at(GaussianPsf(SIGMA), xs, ys)
    flux, err, _ = psf_flux_many(image, variance, xs, ys, psf_images)
    pulls = (flux - true_flux) / err
    assert abs(pulls.mean()) < 4 / np.sqrt(len(pulls))  # bias << error
    assert 0.8 < pulls.std(ddof=1) < 1.2
    sky_only_err = np.sqrt(4 * np.pi * SIGMA**2 * sky_variance)  # E for a Gaussian PSF on flat sky
    assert sky_only_err < np.median(err) < 2 * sky_only_err


def test_batch_matches_single_and_handles_edges() -> None:
    rng = np.random.default_rng(3)
    image = rng.normal(size=(60, 70))
    variance = rng.uniform(1, 2, size=image.shape)
    psf = GaussianPsf(1.7)
    xs = np.array([35.2, 2.4, 68.6, -3.0, 30.0, -40.0])
    ys = np.array([30.7, 10.1, 58.9, 20.0, -10.2, 30.0])
    flux, err, factor = psf_flux_many(image, variance, xs, ys, psf_images_at(psf, xs, ys))
    for i, (x, y) in enumerate(zip(xs[:5], ys[:5], strict=True)):
        single = psf_flux(image, variance, x, y, psf)
        np.testing.assert_allclose(single, (flux[i], err[i], factor[i]), rtol=1e-12)
    full = psf.compute_image(35.2, 30.7).sum()
    assert factor[0] == pytest.approx(full, rel=1e-12)
    assert factor[1] < full  # stamp clipped by the image edge
    assert factor[5] == 0.0 and np.isnan(flux[5])  # stamp entirely outside


def test_edge_star_flux_scales_with_visible_psf_fraction() -> None:
    psf = GaussianPsf(SIGMA)
    x, y = 1.2, 30.4
    weights = psf.compute_image(x, y)
    padded = np.zeros((70, 70))
    padded[15:46, 1:32] = 800.0 * weights / weights.sum()  # frame column c is padded column c + 15
    image = padded[:, 15:]  # columns < 0 of the frame are cut away
    flux, _, factor = psf_flux(image, np.ones_like(image), x, y, psf)
    assert factor == pytest.approx(weights[:, 14:].sum(), rel=1e-12)
    assert flux == pytest.approx(800.0 * factor / weights.sum(), rel=1e-12)
