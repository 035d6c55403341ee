"""ProcessCcdTask: one SDSS frame -> calexp, background, PSF, icSrc and src (measurement-spec.md §2)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from processccd import __version__
from processccd.background import estimate_background
from processccd.butler import Butler
from processccd.dataid import DataId
from processccd.detection import DetectionConfig, DetectionResult, detect_sources
from processccd.image import Exposure, mask_bit
from processccd.meas.shape import psf_adaptive_sigma
from processccd.table import EXTRA_SCHEMA, SOURCE_SCHEMA, write_source_table
from processccd.tasks.make_exposure import MakeExposureConfig, make_exposure
from processccd.tasks.measurement import MeasurementConfig, MeasurementTask

log = logging.getLogger("processCcd")

# Bits the background estimate ignores (2013: EDGE, DETECTED, DETECTED_NEGATIVE).
BACKGROUND_IGNORED_PLANES = ("EDGE", "DETECTED", "DETECTED_NEGATIVE")


@dataclass
class ProcessCcdConfig:
    """Configuration of the whole frame pipeline (defaults reproduce the 2013 SDSS demo)."""

    exposure: MakeExposureConfig = field(default_factory=MakeExposureConfig)
    background_bin_size: int = 512  # SDSS override of the 256-px default
    calibrate_detection: DetectionConfig = field(
        default_factory=lambda: DetectionConfig(include_multiplier=10.0))
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    measurement: MeasurementConfig = field(default_factory=MeasurementConfig)
    psf_sigma_position: tuple[float, float] = (1024.0, 680.0)  # where detection evaluates the PSF width


@dataclass
class ProcessCcdResult:
    data_id: DataId
    n_icsrc: int
    n_src: int
    seconds: float


class ProcessCcdTask:
    """Runs make_exposure, the calibration-stage and final detection/measurement, and writes outputs."""

    def __init__(self, butler: Butler, config: ProcessCcdConfig | None = None) -> None:
        self.butler = butler
        self.config = config or ProcessCcdConfig()

    def run(self, data_id: DataId) -> ProcessCcdResult:
        start = time.perf_counter()
        log.info("Processing %s", data_id.as_dict())
        config = self.config
        exposure = make_exposure(self.butler, data_id, config.exposure)
        ignored = sum(mask_bit(p) for p in BACKGROUND_IGNORED_PLANES)

        background = estimate_background(exposure.image, exposure.mask, ignored, config.background_bin_size)
        exposure.image = (exposure.image - background.image).astype(np.float32)
        total_background = background.image.astype(np.float64)

        psf_sigma = psf_adaptive_sigma(exposure.psf.compute_image(*config.psf_sigma_position))

        calib = self._detect(exposure, psf_sigma, config.calibrate_detection, "processCcd.calibrate.detection")
        total_background += calib.background
        measurement = MeasurementTask(config.measurement)
        ic_columns = measurement.run(exposure, calib.footprints, first_sequence=1,
                                     logger_name="processCcd.calibrate.measurement")

        final = self._detect(exposure, psf_sigma, config.detection, "processCcd.detection")
        total_background += final.background
        src_columns = measurement.run(exposure, final.footprints, first_sequence=len(calib.footprints) + 1,
                                      logger_name="processCcd.measurement")

        self._write(data_id, exposure, total_background.astype(np.float32), ic_columns, src_columns)
        seconds = time.perf_counter() - start
        log.info("Finished %s in %.2f s: %d icSrc, %d src", data_id.label(), seconds,
                 len(calib.footprints), len(final.footprints))
        return ProcessCcdResult(data_id, len(calib.footprints), len(final.footprints), seconds)

    @staticmethod
    def _detect(exposure: Exposure, psf_sigma: float, config: DetectionConfig, logger_name: str
                ) -> DetectionResult:
        """Detect on the exposure; the re-estimated background is subtracted from it in place."""
        result = detect_sources(exposure.image, exposure.mask, psf_sigma, config, logger_name=logger_name)
        exposure.image = result.image.astype(np.float32)
        exposure.mask = result.mask
        return result

    def _provenance(self, data_id: DataId) -> dict[str, str]:
        inputs = {name: str(self.butler.path(name, data_id))
                  for name in ("fpC", "fpM", "tsField", "psField", "asTrans")}
        return {"processccd": __version__, **inputs}

    def _write(self, data_id: DataId, exposure: Exposure, background: np.ndarray,
               ic_columns: dict[str, np.ndarray], src_columns: dict[str, np.ndarray]) -> None:
        provenance = self._provenance(data_id)
        put = self.butler.put
        put("calexp", data_id, lambda p: exposure.write_fits(p, provenance))
        put("calexpBackground", data_id, lambda p: _write_image(p, background, exposure, "BACKGROUND"))
        put("psf", data_id, lambda p: exposure.psf.write_fits(p))
        header = {"EXPID": exposure.exposure_id, "PCCDVER": __version__}
        schema = SOURCE_SCHEMA + EXTRA_SCHEMA
        put("icSrc", data_id, lambda p: write_source_table(p, ic_columns, schema, header))
        put("src", data_id, lambda p: write_source_table(p, src_columns, schema, header))


def _write_image(path: Path, data: np.ndarray, exposure: Exposure, name: str) -> None:
    """One float32 image HDU with the exposure's WCS."""
    hdu = fits.ImageHDU(data.astype(np.float32), header=exposure.wcs.to_header(relax=True), name=name)
    hdu.header["BUNIT"] = "adu"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)
