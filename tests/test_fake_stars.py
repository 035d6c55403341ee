"""Fake-star injection on a demo frame (slow): PSF-model stars of known flux through the whole pipeline.

bench/fake_stars.py injects 150 stars of the frame's own PSF model (unit sum) into 4192 g and runs the
calibration and final stages. Pinned against the injected fluxes:
- the 2013 default: flux.psf, aperture corrected to the 7-px sinc aperture of the frame's real stars, reads
  the model stars low (the demo figure: -0.35 % on this frame, -0.57 % over the 10 frames);
- the LSST-2020 profile: the 12-px circular aperture flux of the injected stars is their injected flux within
  12 px (the unit-sum model holds 100.33 % inside 12 px: its KL components go negative beyond), i.e. the
  photometry, background and noise replacement lose nothing; its flux.psf, corrected to the 12-px aperture of
  the real stars, reads them high by the real stars' extra light (bench figure +2.4 % on this frame).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH_DIR = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def fake_stars(demo_dir):
    sys.path.insert(0, str(BENCH_DIR))
    spec = importlib.util.spec_from_file_location("fake_stars", BENCH_DIR / "fake_stars.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


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
