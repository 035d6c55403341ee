"""CalibrateTask: reference matching, star selection, aperture correction and zero point of the
calibration-stage sources (measurement-spec.md §2.1 from "astrometry" on, §4)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from processccd.errors import CalibrationError
from processccd.image import Exposure
from processccd.refcat import RefCatConfig, ReferenceCatalog, load_reference_catalog
from processccd.tasks.apcorr import ApCorrConfig, ApCorrTask, ApertureCorrection, apply_aperture_correction
from processccd.tasks.astrometry import AstrometryConfig, AstrometryTask, Matches
from processccd.tasks.photocal import PhotoCalConfig, PhotoCalTask, ZeroPoint
from processccd.tasks.star_selector import StarSelection, StarSelectorConfig, StarSelectorTask

log = logging.getLogger("processCcd.calibrate")


@dataclass
class CalibrateConfig:
    """Calibration after the calibration-stage measurement (2013 SdssCalibrateTask defaults)."""

    reference_catalog: RefCatConfig = field(default_factory=RefCatConfig)  # the reference catalogue
    astrometry: AstrometryConfig = field(default_factory=AstrometryConfig)  # matching with the known WCS
    star_selector: StarSelectorConfig = field(default_factory=StarSelectorConfig)  # "catalog" star selector
    ap_corr: ApCorrConfig = field(default_factory=ApCorrConfig)  # aperture correction from the selected stars
    photocal: PhotoCalConfig = field(default_factory=PhotoCalConfig)  # zero point from the matches
    apply_ap_corr: bool = True  # correct the calibration-stage fluxes (2013 doApplyApCorr) before photocal


@dataclass
class CalibrateResult:
    """What calibration produced; `zero_point` is None when photocal failed (the tsField prior is kept)."""

    matches: Matches
    stars: StarSelection
    ap_corr: ApertureCorrection
    zero_point: ZeroPoint | None
    ap_corr_central: float  # the aperture correction at the frame centre
    seconds: float

    @property
    def n_matches(self) -> int:
        return len(self.matches)


class CalibrateTask:
    """Runs astrometric matching, star selection, aperture correction and photocal on one exposure."""

    def __init__(self, config: CalibrateConfig | None = None, catalog_path: Path | None = None) -> None:
        self.config = config or CalibrateConfig()
        self.catalog_path = Path(catalog_path if catalog_path is not None else self.config.reference_catalog.path)

    def run(self, exposure: Exposure, ic_columns: dict[str, np.ndarray]) -> CalibrateResult:
        """Calibrate with the calibration-stage sources `ic_columns` (corrected in place when apply_ap_corr).

        `exposure.image` must be the background-subtracted image the sources were measured on (E2);
        `exposure.photo_calib` and the exposure metadata receive the zero point.
        """
        start = time.perf_counter()
        config = self.config
        matches = self._match(exposure, ic_columns)
        if len(matches) == 0:  # one WARNING for both fallbacks (no aperture correction, tsField zero point)
            log.warning("no source matched the reference catalogue %s: aperture correction 1.0, tsField zero "
                        "point %.6f kept", self.catalog_path, exposure.photo_calib.zero_point)
        stars = StarSelectorTask(config.star_selector).run(exposure.image, ic_columns, matches)
        ap_corr_task = ApCorrTask(config.ap_corr)
        ap_corr = ap_corr_task.run(exposure, ic_columns, stars.source_index, warn=len(matches) > 0)
        central, _ = ap_corr.evaluate(*ap_corr_task.central_position(exposure))
        exposure.metadata["APCORR"] = (round(float(central), 6), "aperture correction at the frame centre")
        exposure.metadata["APCNSTAR"] = (ap_corr.n_stars, "stars of the aperture-correction fit")
        exposure.metadata["APCORDER"] = (ap_corr.order, f"its polynomial order (configured {config.ap_corr.order})")
        if config.apply_ap_corr:
            apply_aperture_correction(ic_columns, ap_corr)
        zero_point = self._photocal(exposure, ic_columns, matches)
        return CalibrateResult(matches, stars, ap_corr, zero_point, float(central), time.perf_counter() - start)

    def _match(self, exposure: Exposure, ic_columns: dict[str, np.ndarray]) -> Matches:
        config = self.config.reference_catalog
        catalog = load_reference_catalog(self.catalog_path, exposure.filter, config)
        if catalog is None:
            catalog = ReferenceCatalog.empty()
        height, width = exposure.shape
        in_frame, ref_x, ref_y = catalog.in_frame(exposure.wcs, width, height, config.border_pixels)
        return AstrometryTask(self.config.astrometry).run(in_frame, ref_x, ref_y, ic_columns["coord.ra"],
                                                          ic_columns["coord.dec"], ic_columns["centroid.sdss.x"])

    def _photocal(self, exposure: Exposure, ic_columns: dict[str, np.ndarray], matches: Matches
                  ) -> ZeroPoint | None:
        prior = exposure.photo_calib.zero_point
        try:
            zero_point = PhotoCalTask(self.config.photocal).run(ic_columns, matches)
        except CalibrationError as err:
            if len(matches):  # else CalibrateTask.run said so
                logging.getLogger("processCcd.calibrate.photocal").warning(
                    "photometric calibration failed (%s); keeping the tsField zero point %.6f", err, prior)
            exposure.metadata["ZPSOURCE"] = ("tsField", "zero point: tsField prior (photocal failed)")
            return None
        exposure.photo_calib = zero_point.photo_calib()
        exposure.metadata["ZPSOURCE"] = ("photocal", "zero point fitted to the reference catalogue")
        exposure.metadata["ZPNSTARS"] = (zero_point.n_stars, "stars used for the zero point")
        exposure.metadata["ZPPRIOR"] = (round(prior, 6), "[mag] tsField zero point")
        return zero_point
