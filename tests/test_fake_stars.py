"""Fake-star injection on demo frames (slow): stars of known flux through the whole pipeline (bench/fake_stars.py).

psField-model stars (150 of the frame's PSF model, unit sum, into 4192 g):
- the 2013 default: flux.psf, aperture corrected to the 7-px sinc aperture of the frame's real stars, reads
  the model stars low (-0.35 % on this frame, -0.57 % over the 10 frames);
- the LSST-2020 profile: the 12-px circular aperture flux of the injected stars is their injected flux within
  12 px (the unit-sum model holds 100.33 % inside 12 px: its KL components go negative beyond), i.e. the
  photometry, background and noise replacement lose nothing.

Realistic (empirical) stars (150 of the psField model plus the real stars' mean residual, cut at 25 px, into
6377 g, whose figures are near the 10 frames' pooled ones): the truth is the injected star's light within 25 px.
- the profile reads them 2.29 % low (pooled -2.85 %): 0.98 % of their light lies beyond 12 px, and against
  their own light within 12 px they still read 1.36 % low (pooled -1.53 %): the empirical stamp is dominated by
  the brightest stars, whose 12-px / PSF ratio exceeds that of the typical (fainter) star the aperture
  correction is fitted to. The issue's 0.3 % target is not met with these stars (nor, +1.3 % here, +1.98 %
  pooled, with model stars, which lack the real stars' light at 2-12 px).
- the default reads them 4.0 % low (pooled -5.1 %): 4.4 % of their light lies beyond 7 px; against their light
  within 7 px it is +0.55 % (pooled +0.03 %).
The bounds are the measured values +- 0.5 %, twice the standard error of a median of ~120 stars of 2.2 %
scatter; the injection is seeded, so a move beyond them is a change of the pipeline, not noise.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def fake_stars_module():
    sys.path.insert(0, str(BENCH_DIR))
    spec = importlib.util.spec_from_file_location("fake_stars", BENCH_DIR / "fake_stars.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fake_stars(demo_dir, fake_stars_module):
    return fake_stars_module


def test_empirical_psf_recovers_a_halo_the_model_lacks(fake_stars_module) -> None:
    """Stars of 90 % Gaussian core (sigma 1.5 px, the PSF model) + 10 % halo (sigma 6 px): the stacked residual
    restores the halo, so the empirical star's light beyond 12 px is the halo's, 0.1 exp(-144/72) / (light
    within 25 px) = 1.353 %, and its stamp is the core + halo profile."""
    from astropy.wcs import WCS

    from processccd.dataid import DataId
    from processccd.image import Exposure, PhotoCalib
    from reference_impl.psf import GaussianPsf

    def profile(shape, x, y, flux):
        yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
        r2 = (xx - x) ** 2 + (yy - y) ** 2
        return flux * (0.9 * np.exp(-r2 / 4.5) / (2 * np.pi * 2.25) + 0.1 * np.exp(-r2 / 72) / (2 * np.pi * 36))

    shape = (300, 400)
    stars = [(60.3, 60.7), (200.2, 60.1), (330.6, 70.4), (70.5, 230.2), (200.8, 220.6), (330.1, 235.3)]
    image = sum(profile(shape, x, y, 1e6) for x, y in stars) + np.random.default_rng(7).normal(0, 1, shape)
    exposure = Exposure(image.astype(np.float32), np.zeros(shape, np.uint16), np.ones(shape, np.float32), WCS(naxis=2),
                        GaussianPsf(1.5), PhotoCalib(1e10, 1e8), DataId(run=1, camcol=1, field=1, filter="r"))
    xs, ys = np.array(stars).T
    psf = fake_stars_module.build_empirical_psf(exposure, xs, ys, xs, ys)
    assert psf.n_stars == 6
    stamp = psf.stamp(150.3, 140.8)
    within_25 = 0.9 + 0.1 * (1 - np.exp(-625 / 72))
    inside_12 = fake_stars_module.light_within(stamp, 150.3, 140.8, 12.0)
    assert 1 - inside_12 == pytest.approx(0.1 * np.exp(-144 / 72) / within_25, abs=2e-4)
    truth = profile((51, 51), 25.3, 24.8, 1.0)
    np.testing.assert_allclose(stamp, np.where(np.hypot(*np.mgrid[-25:26, -25:26] - [[[-0.2]], [[0.3]]]) <= 25,
                                               truth, 0) / within_25, atol=2e-4)
    # the model alone has no halo: its stamp misses it
    model = fake_stars_module.model_stamp(exposure.psf, 150.3, 140.8)
    assert 1 - fake_stars_module.light_within(model, 150.3, 140.8, 12.0) < 1e-6


@pytest.mark.slow
def test_default_reads_psf_model_stars_low_by_the_7px_aperture_wings(fake_stars):
    ratio = fake_stars.measure_frame(fake_stars.benchmark.FRAMES[1], [], 150, 3)
    assert len(ratio) >= 100
    bias = float(np.median(ratio)) - 1
    assert -0.015 < bias < 0.0


@pytest.mark.slow
def test_profile_circular_12px_flux_of_injected_stars_is_their_flux_inside_12px(fake_stars):
    from processccd.meas.circular_aperture import circular_aperture_fluxes

    frame = fake_stars.benchmark.FRAMES[1]
    columns = fake_stars.measure_frame(frame, [fake_stars.PROFILE], 150, 3, column="flux.circular.12_0")
    assert len(columns) >= 100
    # the model's own flux inside 12 px, by photutils on the model stamp alone (unit sum)
    from processccd.butler import Butler
    from processccd.psf import SdssKLPsf

    butler = Butler(fake_stars.ROOT / "input", fake_stars.ROOT / "input")
    psf = SdssKLPsf.from_file(butler.path("psField", frame), frame.filter)
    stamp = np.zeros((61, 61), np.float32)
    model = psf.compute_image(1024.0, 680.0)
    stamp[15:46, 15:46] = model / model.sum()
    inside = circular_aperture_fluxes(stamp, np.ones_like(stamp), np.zeros(stamp.shape, np.uint16),
                                      np.array([30.0]), np.array([30.0]), (12.0,)).flux[0, 0]
    assert float(np.median(columns)) / inside == pytest.approx(1.0, abs=0.004)


EMPIRICAL_FRAME = 6  # 6377 g


@pytest.mark.slow
def test_profile_reads_realistic_stars_low_by_their_light_beyond_12px_and_more(fake_stars):
    frame = fake_stars.benchmark.FRAMES[EMPIRICAL_FRAME]
    assert frame.label() == "6377 g4 399"
    ratios = fake_stars.measure_frame_truths(frame, [fake_stars.PROFILE], 150, 3, injection="empirical")
    assert len(ratios["total"]) >= 100
    bias = {name: float(np.median(values)) - 1 for name, values in ratios.items()}
    assert bias["total"] == pytest.approx(-0.0229, abs=0.005)
    assert bias["r12"] == pytest.approx(-0.0136, abs=0.005)
    beyond_12 = fake_stars.light_beyond(fake_stars.empirical_psf(frame).stamp(1024.0, 680.0))[1]
    assert 0.005 < beyond_12 < 0.015


@pytest.mark.slow
def test_default_returns_realistic_stars_light_within_7px(fake_stars):
    frame = fake_stars.benchmark.FRAMES[EMPIRICAL_FRAME]
    ratios = fake_stars.measure_frame_truths(frame, [], 150, 3, injection="empirical")
    assert len(ratios["total"]) >= 100
    bias = {name: float(np.median(values)) - 1 for name, values in ratios.items()}
    assert bias["total"] == pytest.approx(-0.0400, abs=0.005)
    assert abs(bias["r7"]) < 0.01
