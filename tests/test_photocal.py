"""Photometric zero point: the clipping loop, its degenerate cases, the match selection."""

from __future__ import annotations

import math

import numpy as np
import pytest

from processccd.errors import CalibrationError
from processccd.refcat import ReferenceCatalog
from processccd.table import EXTRA_SCHEMA, SOURCE_SCHEMA, empty_columns
from processccd.tasks.astrometry import Matches
from processccd.tasks.photocal import PhotoCalTask, clipped_zero_point


def test_clipping_rejects_outliers_and_returns_the_weighted_mean() -> None:
    rng = np.random.default_rng(6)
    err = rng.uniform(0.01, 0.05, 40)
    dmag = 27.5 + rng.normal(0, err)
    outliers = np.array([2, 11, 23, 31])
    dmag[outliers] += np.array([0.4, -0.5, 1.2, 0.3])
    result = clipped_zero_point(dmag, err)
    good = np.ones(40, dtype=bool)
    good[outliers] = False
    assert result.n_stars <= 36
    kept_mean, weight_sum = np.average(dmag[good], weights=err[good] ** -2, returned=True)
    assert result.zero_point == pytest.approx(kept_mean, abs=0.005)
    assert result.zero_point == pytest.approx(27.5, abs=0.01)
    assert result.sigma == pytest.approx(math.sqrt(1 / weight_sum), rel=0.1)


def test_without_outliers_all_stars_are_kept_and_the_result_is_exact() -> None:
    dmag = np.array([27.49, 27.50, 27.51, 27.50, 27.495, 27.505])
    err = np.array([0.01, 0.02, 0.01, 0.03, 0.02, 0.02])
    result = clipped_zero_point(dmag, err)
    zp, weight_sum = np.average(dmag, weights=err**-2, returned=True)
    assert result.n_stars == 6
    assert result.zero_point == pytest.approx(zp, abs=1e-12)
    assert result.sigma == pytest.approx(math.sqrt(1 / weight_sum), rel=1e-12)


def test_sigma_max_bounds_the_clipping_width() -> None:
    # a broad distribution: sigma from the quartiles is ~0.3 mag, but sigma_max = 0.05 clips at 0.15
    dmag = np.array([26.8, 27.1, 27.4, 27.45, 27.5, 27.5, 27.55, 27.6, 27.9, 28.2])
    result = clipped_zero_point(dmag, np.full(10, 0.02), sigma_max=0.05)
    assert result.n_stars < 10
    assert result.zero_point == pytest.approx(27.5, abs=0.05)


def test_single_star_and_no_star() -> None:
    result = clipped_zero_point(np.array([27.3]), np.array([0.02]))
    assert result.zero_point == pytest.approx(27.3) and result.n_stars == 1
    with pytest.raises(CalibrationError):
        clipped_zero_point(np.array([np.nan]), np.array([0.02]))


def test_task_selection_and_zero_point() -> None:
    n = 8
    zp = 27.5
    mag = np.array([17.0, 17.5, 18.0, 18.5, 19.0, 19.5, 22.5, 17.2])
    columns = empty_columns(n, SOURCE_SCHEMA + EXTRA_SCHEMA)
    scatter = np.array([0.01, -0.01, 0.005, 0.0, 0.0, -0.005, 0.0, 0.002])  # [mag]
    columns["flux.psf"] = 10 ** (-0.4 * (mag - zp - scatter))
    columns["flux.psf.err"] = columns["flux.psf"] * 0.01
    columns["flux.psf"][3] *= 1.5  # saturated, and would bias the zero point by -0.44 mag
    columns["flags.pixel.saturated.any"][3] = True
    columns["flux.psf"][4] = -5.0  # non-positive flux
    catalog = ReferenceCatalog(np.arange(n), np.zeros(n), np.zeros(n), mag, np.full(n, 0.02), np.ones(n, bool))
    matches = Matches(np.arange(n), catalog, np.zeros(n), np.zeros(n), np.zeros(n))
    task = PhotoCalTask()
    np.testing.assert_array_equal(task.select(columns, matches), [0, 1, 2, 5, 7])  # 6: fainter than 22
    result = task.run(columns, matches)
    used = [0, 1, 2, 5, 7]
    assert result.zero_point == pytest.approx(zp + np.mean(scatter[used]), abs=1e-9)  # equal errors
    assert result.n_stars == 5
    calib = result.photo_calib()
    assert calib.zero_point == pytest.approx(result.zero_point)
    assert calib.flux_mag0_err == pytest.approx(0.4 * math.log(10) * calib.flux_mag0 * result.sigma)
