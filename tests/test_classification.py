"""classification.extendedness."""

from __future__ import annotations

import math

import numpy as np

from processccd.meas.classification import extendedness


def test_extendedness_threshold_and_nan() -> None:
    psf = np.array([100.0, 100.0, 100.0, 100.0, 100.0])
    combo = np.array([100.0, 108.0, 108.2, math.nan, 500.0])
    # 0.925 * 108 = 99.9 < 100 -> star; 0.925 * 108.2 = 100.085 -> galaxy; NaN -> galaxy
    np.testing.assert_array_equal(extendedness(psf, combo), [0.0, 0.0, 1.0, 1.0, 1.0])


def test_extendedness_boundary_is_galaxy_and_scalar_works() -> None:
    assert extendedness(92.5, 100.0) == 1.0  # equality: not "<", so extended
    assert extendedness(92.6, 100.0) == 0.0
    assert extendedness(10.0, 100.0, fac1=0.05) == 0.0
