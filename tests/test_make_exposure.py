"""make_exposure on the demo frames: pedestal, trim, mask planes, and the two variance models."""

from __future__ import annotations

import numpy as np
import pytest

from processccd.background import clipped_stats, estimate_background
from processccd.butler import Butler
from processccd.dataid import DataId
from processccd.image import mask_bit
from processccd.tasks.make_exposure import MakeExposureConfig, make_exposure

pytestmark = pytest.mark.slow

BAD = mask_bit("INTRP") | mask_bit("SAT") | mask_bit("CR")


def sky_noise_ratio(demo_dir, data_id: DataId, variance_model: str) -> float:
    """Measured sky noise (3-pass clipped stdev of unmasked pixels) over the model's sqrt(median variance)."""
    exposure = make_exposure(Butler(demo_dir / "input"), data_id, MakeExposureConfig(variance_model=variance_model))
    background = estimate_background(exposure.image, exposure.mask, 0, 512).image
    sky = (exposure.mask & BAD) == 0
    measured = clipped_stats((exposure.image - background)[sky]).stdev
    return measured / float(np.sqrt(np.median(exposure.variance[sky])))


@pytest.mark.parametrize("run, field, f", [(4192, 300, "u"), (4192, 300, "z"), (6377, 399, "u"), (6377, 399, "z")])
def test_physical_variance_matches_the_measured_sky_noise(demo_dir, run, field, f):
    data_id = DataId(run=run, camcol=4, field=field, filter=f, rerun=40)
    # the 2013 variance (image/gain, no dark variance) underestimates the noise by ~30 % in u and z ...
    assert sky_noise_ratio(demo_dir, data_id, "lsst2013") > 1.2
    # ... max(image, 0)/gain + dark_variance matches it to a few per cent
    assert 0.93 < sky_noise_ratio(demo_dir, data_id, "physical") < 1.08


def test_exposure_is_trimmed_and_pedestal_free(demo_dir):
    exposure = make_exposure(Butler(demo_dir / "input"), DataId(run=4192, camcol=4, field=300, filter="g", rerun=40))
    assert exposure.image.shape == exposure.mask.shape == exposure.variance.shape == (1361, 2048)
    assert exposure.image.dtype == np.float32
    assert np.median(exposure.image) == pytest.approx(95.4, abs=1.0)  # header SKY of 4192 g (sdss-inputs §1)
    assert np.count_nonzero(exposure.mask & mask_bit("SAT")) == 501
    np.testing.assert_allclose(exposure.variance, exposure.image / np.float32(3.995), rtol=1e-6)
    assert exposure.exposure_id == 4192140300
