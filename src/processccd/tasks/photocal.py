"""Photometric zero point from the reference matches (measurement-spec.md §2.1 "Photocal", 2013 PhotoCal).

m_ref = ZP − 2.5 log10(flux): the zero point is a clipped estimate of dmag = m_ref + 2.5 log10(flux) over
clean matched stars, finished by an inverse-variance weighted mean of the surviving dmag.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from processccd.errors import CalibrationError
from processccd.image import PhotoCalib
from processccd.stats import IQR_TO_SIGMA
from processccd.tasks.astrometry import Matches

log = logging.getLogger("processCcd.calibrate.photocal")

HISTOGRAM_BINS = 20  # first iteration: the mode of a 20-bin histogram of dmag
FWHM_TO_SIGMA = 2.3  # first iteration: sigma = (half-maximum width of the mode) / 2.3


@dataclass
class PhotoCalConfig:
    """2013 PhotoCalConfig defaults."""

    flux_column: str = "flux.psf"
    mag_limit: float = 22.0  # reference objects fainter than this are not used
    bad_flags: tuple[str, ...] = ("flags.pixel.edge", "flags.pixel.interpolated.any",
                                  "flags.pixel.saturated.any")
    n_sigma: float = 3.0  # clip at this many sigma
    sigma_max: float = 0.25  # [mag] largest sigma the clipping trusts
    use_median: bool = True  # centre of each clipping iteration: median (else the weighted mean)
    n_iter: int = 20  # largest number of clipping iterations


@dataclass(frozen=True)
class ZeroPoint:
    """Zero point [mag] (m = zero_point − 2.5 log10 DN), its error and the number of stars used."""

    zero_point: float
    sigma: float
    n_stars: int

    def photo_calib(self) -> PhotoCalib:
        flux_mag0 = 10.0 ** (0.4 * self.zero_point)
        return PhotoCalib(flux_mag0=flux_mag0, flux_mag0_err=0.4 * math.log(10.0) * flux_mag0 * self.sigma)


def clipped_zero_point(dmag: np.ndarray, dmag_err: np.ndarray, n_sigma: float = 3.0, sigma_max: float = 0.25,
                       use_median: bool = True, n_iter: int = 20) -> ZeroPoint:
    """Iteratively clipped zero point of the offsets `dmag` with errors `dmag_err` (2013 PhotoCal.getZeroPoint).

    Iteration 1 centres on the mode of a 20-bin histogram (the median if the modal bins are not contiguous),
    with sigma from the mode's half-maximum width / 2.3 (or the quartiles / 2.3); later iterations centre on
    the median of the kept points with sigma = 0.7413 × their interquartile range. Points within
    n_sigma·min(sigma, sigma_max) of the centre are kept; the loop stops when the kept number stops
    changing. Result: inverse-variance weighted mean of the kept points and its error.
    Non-finite inputs are ignored; no input raises CalibrationError.
    """
    finite = np.isfinite(dmag) & np.isfinite(dmag_err)
    order = np.argsort(dmag[finite], kind="stable")
    dmag = np.asarray(dmag[finite], dtype=np.float64)[order]
    dmag_err = np.asarray(dmag_err[finite], dtype=np.float64)[order]
    n_all = len(dmag)
    if n_all == 0:
        raise CalibrationError("no usable star for the photometric zero point")
    weights = 1.0 / np.maximum(dmag_err, 1e-10) ** 2
    good = np.ones(n_all, dtype=bool)
    n_good = n_all
    sigma = 0.0
    for iteration in range(n_iter):
        if iteration == 0:
            centre, sigma = _mode_estimate(dmag)
        else:
            kept = dmag[good]  # still sorted
            n_kept = len(kept)
            centre = float(np.median(kept)) if use_median else float(np.average(kept, weights=weights[good]))
            upper = kept[min(int(0.75 * n_kept + 0.5), n_kept - 1)]
            lower = kept[min(int(0.25 * n_kept + 0.5), n_kept - 1)]
            sigma = IQR_TO_SIGMA * float(upper - lower)
        good = np.abs(dmag - centre) < n_sigma * min(sigma, sigma_max)
        previous, n_good = n_good, int(good.sum())
        if n_good == 0:
            if iteration == 0:  # everything in one bin: fall back to the mean of all stars
                centre = float(np.average(dmag, weights=weights))
            log.warning("no good stars remain after clipping iteration %d; using %.6f", iteration + 1, centre)
            return ZeroPoint(centre, sigma, n_all)
        if n_good == previous:
            break
    zero_point, weight_sum = np.average(dmag[good], weights=weights[good], returned=True)
    return ZeroPoint(float(zero_point), float(math.sqrt(1.0 / weight_sum)), n_good)


def _mode_estimate(dmag: np.ndarray) -> tuple[float, float]:
    """(centre, sigma) of sorted `dmag` from the mode of its histogram (first clipping iteration)."""
    n = len(dmag)
    counts, edges = np.histogram(dmag, HISTOGRAM_BINS)
    modal = np.flatnonzero(counts == counts.max())
    if modal[-1] - modal[0] + 1 != len(modal):  # several separated modes: median and quartiles
        lower, upper = dmag[int(0.25 * n)], dmag[int(0.75 * n)]
        return float(np.median(dmag)), float(upper - lower) / FWHM_TO_SIGMA
    centre = 0.5 * (edges[modal[0]] + edges[modal[-1] + 1])
    half_peak = 0.5 * counts[modal].sum() / len(modal)
    j = modal[0]
    while j >= 0 and counts[j] > half_peak:
        j -= 1
    lower = dmag[counts[:max(j, 0)].sum()]  # first point of the bin where the mode falls below half height
    j = modal[-1]
    while j < HISTOGRAM_BINS and counts[j] > half_peak:
        j += 1
    upper = dmag[min(counts[:min(j, HISTOGRAM_BINS - 1)].sum(), n - 1)]
    if lower == upper:
        lower, upper = dmag[int(0.25 * n)], dmag[int(0.75 * n)]
    return float(centre), float(upper - lower) / FWHM_TO_SIGMA


class PhotoCalTask:
    """Zero point of an exposure from its matched reference stars."""

    def __init__(self, config: PhotoCalConfig | None = None) -> None:
        self.config = config or PhotoCalConfig()

    def select(self, columns: dict[str, np.ndarray], matches: Matches) -> np.ndarray:
        """Indices of the matches usable for the zero point: clean source, positive finite flux, a star
        with a finite reference magnitude not fainter than mag_limit."""
        config = self.config
        src = matches.source_index
        good = matches.clean_stars(columns, config.bad_flags)
        flux = columns[config.flux_column][src]
        flux_err = columns[f"{config.flux_column}.err"][src]
        ref = matches.reference
        with np.errstate(invalid="ignore"):
            good &= np.isfinite(flux) & (flux > 0) & np.isfinite(flux_err)
            good &= np.isfinite(ref.mag) & np.isfinite(ref.mag_err) & (ref.mag <= config.mag_limit)
        return np.flatnonzero(good)

    def run(self, columns: dict[str, np.ndarray], matches: Matches) -> ZeroPoint:
        """The zero point; CalibrationError when no match is usable."""
        config = self.config
        chosen = self.select(columns, matches)
        log.debug("%d of %d matches usable", len(chosen), len(matches))
        src = matches.source_index[chosen]
        flux = columns[config.flux_column][src].astype(np.float64)
        flux_err = columns[f"{config.flux_column}.err"][src].astype(np.float64)
        dmag = matches.reference.mag[chosen] + 2.5 * np.log10(flux)
        dmag_err = np.hypot(2.5 / math.log(10.0) * flux_err / flux, matches.reference.mag_err[chosen])
        result = clipped_zero_point(dmag, dmag_err, config.n_sigma, config.sigma_max, config.use_median,
                                    config.n_iter)
        log.info("Magnitude zero point: %f +/- %f from %d stars", result.zero_point, result.sigma, result.n_stars)
        return result
