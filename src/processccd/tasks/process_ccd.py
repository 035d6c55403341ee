"""ProcessCcdTask: one SDSS frame -> calexp, background, PSF, icSrc and src (measurement-spec.md §2)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from processccd import __version__
from processccd.background import BackgroundConfig, estimate_background
from processccd.butler import Butler
from processccd.config import ConfigError
from processccd.dataid import DataId
from processccd.detection import DetectionConfig, DetectionResult, Footprints, detect_sources
from processccd.image import Exposure, mask_bit, write_float_image
from processccd.meas.classification import extendedness
from processccd.meas.shape import psf_adaptive_sigma
from processccd.psf import adaptive_gaussian_width
from processccd.refcat import resolve_catalog_path
from processccd.table import write_source_table
from processccd.tasks.apcorr import ApertureCorrection, apply_aperture_correction
from processccd.tasks.astrometry import write_match_table
from processccd.tasks.calibrate import CalibrateConfig, CalibrateResult, CalibrateTask
from processccd.tasks.make_exposure import WCS_FROM_ASTRANS, MakeExposureConfig, WcsConfig, make_exposure
from processccd.tasks.measurement import MeasurementConfig, MeasurementTask, measurement_schema

log = logging.getLogger("processCcd")
FWHM_PER_SIGMA = 2.0 * float(np.sqrt(2.0 * np.log(2.0)))

# The products a frame can write (the per-frame metadata record is always written: it marks a complete frame).
PRODUCTS = ("calexp", "calexpBackground", "psf", "icSrc", "src", "icMatch", "apCorr")


@dataclass
class OutputConfig:
    """What a frame writes. Defaults: every product, the calexp uncompressed (byte-identical to 2013's layout).

    `products` selects the datasets (a catalogue-only campaign: icSrc, src, icMatch, apCorr). `calexp_compression`:
    "none"; "lossless" = tile-compressed planes, GZIP_2 (byte-shuffled gzip) without quantisation for IMAGE and
    VARIANCE, RICE_1 for MASK, every pixel read back exactly; "rice" = RICE_1 for all three planes, IMAGE and
    VARIANCE quantised (SUBTRACTIVE_DITHER_1, dither seed from the tile checksum: reproducible) with a step of
    the tile's noise / `quantize_level` (MASK lossless).
    """

    products: tuple[str, ...] = PRODUCTS
    calexp_compression: Literal["none", "lossless", "rice"] = "none"
    quantize_level: float = 16.0

    def __post_init__(self) -> None:
        unknown = [name for name in self.products if name not in PRODUCTS]
        if unknown:
            raise ConfigError(f"config output.products: unknown product(s) {', '.join(unknown)} "
                              f"(known: {', '.join(PRODUCTS)})")
        if not self.quantize_level > 0:
            raise ConfigError(f"config output.quantize_level: must be > 0, got {self.quantize_level}")


@dataclass
class ProcessCcdConfig:
    """Configuration of the whole frame pipeline (defaults reproduce the 2013 SDSS demo)."""

    exposure: MakeExposureConfig = field(default_factory=MakeExposureConfig)
    background_bin_size: int = 512  # SDSS override of the 256-px default
    calibrate_detection: DetectionConfig = field(
        default_factory=lambda: DetectionConfig(include_multiplier=10.0))
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    # 2013: the calibration stage measured without multishapelet (its modelFlux slot was flux.gaussian)
    calibrate_measurement: MeasurementConfig = field(default_factory=lambda: MeasurementConfig(model_fluxes=False))
    measurement: MeasurementConfig = field(default_factory=MeasurementConfig)
    extendedness_fac1: float = 0.925  # extended if fac1 * combo flux >= psf flux (classification.extendedness)
    calibrate: CalibrateConfig = field(default_factory=CalibrateConfig)  # matching, apCorr, zero point
    psf_sigma_position: tuple[float, float] = (1024.0, 680.0)  # where detection evaluates the PSF width
    wcs: WcsConfig = field(default_factory=WcsConfig)  # asTrans or the fpC header
    output: OutputConfig = field(default_factory=OutputConfig)  # which products, calexp compression


@dataclass
class StageResult:
    """What a detection + measurement stage produced."""

    columns: dict[str, np.ndarray]  # source catalogue columns (table.SOURCE_SCHEMA + EXTRA_SCHEMA)
    footprints: Footprints
    backgrounds: tuple[np.ndarray, ...]  # the float32 backgrounds subtracted during the stage, in order

    @property
    def n_sources(self) -> int:
        """Rows of the catalogue: the footprints, and their deblended children when deblending is on."""
        return len(self.columns["id"])


@dataclass
class CalibrationStageResult(StageResult):
    """The calibration stage also matched, selected stars, fitted the aperture correction and zero point."""

    calibration: CalibrateResult


@dataclass
class ProcessCcdResult:
    """Small summary of one frame (what an executor sends back to the client)."""

    data_id: DataId
    n_icsrc: int
    n_src: int
    seconds: float
    n_matches: int | None = None  # reference-catalogue matches of the calibration stage
    zero_point: float | None = None  # photometric zero point [mag] (m = ZP - 2.5 log10 DN)
    ap_corr_central: float | None = None  # aperture correction at the frame centre


class ProcessCcdTask:
    """Runs make_exposure, the calibration-stage and final detection/measurement, and writes outputs."""

    def __init__(self, butler: Butler, config: ProcessCcdConfig | None = None) -> None:
        self.butler = butler
        self.config = config or ProcessCcdConfig()

    def run(self, data_id: DataId) -> ProcessCcdResult:
        start = time.perf_counter()
        log.info("Processing %s", data_id.as_dict())
        exposure = make_exposure(self.butler, data_id, self.config.exposure, self.config.wcs)
        exposure.metadata["SEEING"] = (round(self.seeing_arcsec(exposure), 4),
                                       "[arcsec] PSF FWHM at the frame centre")
        calib = self.calibrate_stage(exposure)
        calibration = calib.calibration
        final = self.final_stage(exposure, first_sequence=calib.n_sources + 1, ap_corr=calibration.ap_corr,
                                 earlier=calib)
        (background,) = final.backgrounds  # the stages' total, formed by final_stage
        self._write(data_id, exposure, background, calib.columns, final.columns, calibration)
        seconds = time.perf_counter() - start
        log.info("Finished %s in %.2f s: %d icSrc, %d src", data_id.label(), seconds, calib.n_sources,
                 final.n_sources)
        zero_point = calibration.zero_point
        return ProcessCcdResult(data_id, calib.n_sources, final.n_sources, seconds, n_matches=calibration.n_matches,
                                zero_point=None if zero_point is None else zero_point.zero_point,
                                ap_corr_central=calibration.ap_corr_central)

    def psf_sigma(self, exposure: Exposure) -> float:
        """Width of the detection smoothing Gaussian: PsfAttributes' circular adaptive-moment width of the PSF
        where detection evaluates it (2013: the frame centre)."""
        return adaptive_gaussian_width(exposure.psf.compute_image(*self.config.psf_sigma_position))

    def seeing_arcsec(self, exposure: Exposure) -> float:
        """FWHM [arcsec] of the PSF model at the frame centre: 2 sqrt(2 ln 2) x its adaptive-moment sigma."""
        height, width = exposure.shape
        kernel = exposure.psf.kernel((width - 1) / 2.0, (height - 1) / 2.0)
        sigma = psf_adaptive_sigma(kernel / kernel.sum())
        pixel_scale = 3600.0 * float(np.sqrt(abs(np.linalg.det(exposure.wcs.pixel_scale_matrix))))
        return FWHM_PER_SIGMA * sigma * pixel_scale

    def calibrate_stage(self, exposure: Exposure) -> CalibrationStageResult:
        """Background 1 -> E1, bright detection (x10) + background 2 -> E2, icSrc measurement, calibration.

        The exposure's image becomes E2 in place; its zero point becomes the photocal one; the icSrc fluxes
        are aperture corrected.
        """
        config = self.config
        ignored = sum(mask_bit(p) for p in BackgroundConfig().ignored_mask_planes)
        background = estimate_background(exposure.image, exposure.mask, ignored, config.background_bin_size)
        exposure.image = (exposure.image - background.image).astype(np.float32, copy=False)
        psf_sigma = self.psf_sigma(exposure)
        detection = self._detect(exposure, psf_sigma, config.calibrate_detection, "processCcd.calibrate.detection")
        columns = MeasurementTask(config.calibrate_measurement).run(
            exposure, detection.footprints, first_sequence=1, logger_name="processCcd.calibrate.measurement",
            threshold=detection.threshold, psf_sigma=psf_sigma)
        catalog_path = resolve_catalog_path(config.calibrate.reference_catalog.path, self.butler.input_root)
        calibration = CalibrateTask(config.calibrate, catalog_path).run(exposure, columns)
        log.debug("calibration (matching, apCorr, photocal) took %.3f s", calibration.seconds)
        return CalibrationStageResult(columns=columns, footprints=detection.footprints,
                                      backgrounds=(background.image, detection.background), calibration=calibration)

    def final_stage(self, exposure: Exposure, first_sequence: int, ap_corr: ApertureCorrection | None = None,
                    earlier: StageResult | None = None) -> StageResult:
        """Final detection + background 3 -> E3 (in place), src measurement, aperture correction (if given).

        With `earlier` (the calibration stage), the result's background is the total of its backgrounds and
        this stage's, formed before the measurement (whose memory peak then holds one image, not three);
        `earlier.backgrounds` is emptied."""
        psf_sigma = self.psf_sigma(exposure)
        detection = self._detect(exposure, psf_sigma, self.config.detection, "processCcd.detection")
        footprints, backgrounds, threshold = detection.footprints, (detection.background,), detection.threshold
        del detection
        if earlier is not None:
            backgrounds = (total_background(earlier.backgrounds + backgrounds),)
            earlier.backgrounds = ()
        columns = MeasurementTask(self.config.measurement).run(exposure, footprints, first_sequence,
                                                               logger_name="processCcd.measurement",
                                                               threshold=threshold, psf_sigma=psf_sigma)
        if ap_corr is not None:
            apply_aperture_correction(columns, ap_corr)
        if self.config.measurement.model_fluxes:
            columns["classification.extendedness"] = extendedness(
                columns["flux.psf"], columns["multishapelet.combo.flux"], self.config.extendedness_fac1)
        return StageResult(columns=columns, footprints=footprints, backgrounds=backgrounds)

    @staticmethod
    def _detect(exposure: Exposure, psf_sigma: float, config: DetectionConfig, logger_name: str
                ) -> DetectionResult:
        """Detect on the exposure; the re-estimated background is subtracted from it in place."""
        result = detect_sources(exposure.image, exposure.mask, psf_sigma, config, logger_name=logger_name)
        exposure.image = result.image.astype(np.float32, copy=False)
        exposure.mask = result.mask
        return result

    def _provenance(self, data_id: DataId, exposure: Exposure) -> dict[str, str]:
        names = ["fpC", "fpM", "tsField", "psField"]
        if exposure.metadata.get("WCSSRC", (WCS_FROM_ASTRANS,))[0] == WCS_FROM_ASTRANS:
            names.append("asTrans")
        inputs = {name: str(self.butler.path(name, data_id)) for name in names}
        return {"processccd": __version__, **inputs}

    def _write(self, data_id: DataId, exposure: Exposure, background: np.ndarray,
               ic_columns: dict[str, np.ndarray], src_columns: dict[str, np.ndarray],
               calibration: CalibrateResult) -> None:
        output = self.config.output
        provenance = self._provenance(data_id, exposure)
        header = {"EXPID": exposure.exposure_id, "PCCDVER": __version__}
        ic_schema = measurement_schema(self.config.calibrate_measurement)
        src_schema = measurement_schema(self.config.measurement)
        wcs_cards = exposure.wcs_cards()
        writers = {
            "calexp": lambda p: exposure.write_fits(p, provenance, output.calexp_compression, output.quantize_level,
                                                    wcs_cards),
            "calexpBackground": lambda p: write_float_image(p, background.astype(np.float32, copy=False), wcs_cards,
                                                            "BACKGROUND", "adu"),
            "psf": lambda p: exposure.psf.write_fits(p),
            "icSrc": lambda p: write_source_table(p, ic_columns, ic_schema, header),
            "src": lambda p: write_source_table(p, src_columns, src_schema, header),
            "icMatch": lambda p: write_match_table(p, calibration.matches, ic_columns["id"], exposure.filter),
            "apCorr": lambda p: calibration.ap_corr.write_yaml(p),
        }
        for name in PRODUCTS:  # always in this order
            if name in output.products:
                self.butler.put(name, data_id, writers[name])


def total_background(backgrounds: tuple[np.ndarray, ...], rows_per_block: int = 64) -> np.ndarray:
    """The sum of the backgrounds, added in float64 in their order and rounded once to float32 (the
    calexpBackground product), a block of rows at a time so that no full-frame float64 array is made."""
    total = np.empty(backgrounds[0].shape, dtype=np.float32)
    for start in range(0, total.shape[0], rows_per_block):
        rows = slice(start, start + rows_per_block)
        block = backgrounds[0][rows].astype(np.float64)
        for background in backgrounds[1:]:
            block += background[rows]
        total[rows] = block
    return total
