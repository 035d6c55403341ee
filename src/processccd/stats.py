"""Robust spread estimators of a Gaussian sample, shared by calibration, QA and the list comparison."""

from __future__ import annotations

import math

import numpy as np

ROBUST_SIGMA = 1.4826  # standard deviation of a Gaussian per unit median absolute deviation
IQR_TO_SIGMA = 0.741301109252802  # standard deviation of a Gaussian per unit interquartile range


def robust_scatter(values: np.ndarray) -> float:
    """1.4826 × median absolute deviation (NaN when empty)."""
    if values.size == 0:
        return math.nan
    return float(ROBUST_SIGMA * np.median(np.abs(values - np.median(values))))
