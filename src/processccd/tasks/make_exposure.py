"""make_exposure: the five SDSS inputs of one frame -> an `Exposure` (measurement-spec.md §1)."""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from processccd.butler import Butler
from processccd.dataid import DataId
from processccd.errors import InputError, MissingInputError
from processccd.image import FPM_TO_MASK_PLANE, Exposure, PhotoCalib, mask_bit
from processccd.psf import SdssKLPsf
from processccd.sdss.fits import header_number
from processccd.sdss.fpc import FpcFrame
from processccd.sdss.fpm import paint_spans
from processccd.wcs import fit_tan_sip, wcs_from_fpc_header

if TYPE_CHECKING:
    from astropy.wcs import WCS

log = logging.getLogger("processCcd")

WCS_FROM_ASTRANS = "asTrans"
WCS_FROM_FPC = "fpC header"
MJD_EPOCH = datetime.datetime(1858, 11, 17)  # MJD 0
SECONDS_PER_DAY = 86400.0


@dataclass
class MakeExposureConfig:
    """How an SDSS frame becomes an exposure."""

    remove_pedestal: bool = True  # subtract the fpC SOFTBIAS (1000 DN)
    overlap_rows: int = 128  # rows at the top of the frame shared with the next field; removed
    # "lsst2013": (fpC - 1000)/gain as the 2013 stack; "physical": max(image, 0)/gain + dark_variance
    variance_model: Literal["lsst2013", "physical"] = "lsst2013"
    wcs_sip_degree: int = 3  # order of the TAN-SIP fitted to the exact asTrans transform
    psf_coordinate_offset: float = 0.0  # 0 as 2013 (psField polynomial in x, y); 0.5 for SDSS row/col


@dataclass
class WcsConfig:
    """Where the calexp WCS comes from."""

    # "auto": the asTrans solution (TAN-SIP fit) when the run's asTrans file holds the frame, else the fpC
    # header's TAN WCS with a WARNING; "asTrans": asTrans only (missing is an error); "fpC": the header always
    source: Literal["auto", "asTrans", "fpC"] = "auto"


def make_exposure(butler: Butler, data_id: DataId, config: MakeExposureConfig | None = None,
                  wcs_config: WcsConfig | None = None) -> Exposure:
    """Read fpC, fpM, tsField, psField and asTrans for `data_id` and build the trimmed exposure."""
    config = config or MakeExposureConfig()
    fpc = butler.get("fpC", data_id)
    fpm = butler.get("fpM", data_id)
    tsfield = butler.get("tsField", data_id)
    psf_components = butler.get("psField", data_id)

    f = data_id.filter_index
    gain = float(tsfield.gain[f])
    dark_variance = float(tsfield.dark_variance[f])
    # everything is computed on the rows kept (the overlap rows at the top are dropped)
    height = fpc.image.shape[0] - config.overlap_rows
    kept = fpc.image[:height]
    image = kept - np.float32(fpc.soft_bias) if config.remove_pedestal else kept.copy()

    if fpm.shape != fpc.image.shape:
        raise InputError(f"{butler.path('fpM', data_id)}: mask shape {fpm.shape} != image {fpc.image.shape}")
    mask = np.zeros(image.shape, dtype=np.uint16)
    for fpm_name, plane_name in FPM_TO_MASK_PLANE.items():
        if fpm_name in fpm.spans:
            paint_spans(mask, fpm.spans[fpm_name], mask_bit(plane_name))  # the spans of the rows kept

    if config.variance_model == "lsst2013":
        variance = image / np.float32(gain)
    else:
        variance = np.maximum(image, 0) / np.float32(gain) + np.float32(dark_variance)
    variance = variance.astype(np.float32, copy=False)
    if not np.isfinite(image).any():
        raise InputError(f"{butler.path('fpC', data_id)}: no finite pixel in the frame")

    wcs, wcs_source = exposure_wcs(butler, data_id, fpc, image.shape[1], height, config.wcs_sip_degree,
                                   (wcs_config or WcsConfig()).source)
    psf = SdssKLPsf(psf_components, sdss_offset=config.psf_coordinate_offset)
    photo_calib = PhotoCalib(
        flux_mag0=tsfield.flux_mag0(data_id.filter, fpc.exptime),
        flux_mag0_err=tsfield.flux_mag0(data_id.filter, fpc.exptime) * 0.4 * np.log(10)
        * tsfield.zero_point_err(data_id.filter),
    )
    metadata = {
        "EXPTIME": (fpc.exptime, "[s] drift-scan exposure time"),
        "AIRMASS": (float(tsfield.airmass[f]), "airmass (tsField)"),
        "MJD": (float(tsfield.mjd[f]), "[d] MJD (TAI) of row 0 (tsField)"),
        "GAIN": (gain, "[e-/DN] tsField gain"),
        "DARKVAR": (dark_variance, "[DN^2] tsField dark variance"),
        "VARMODEL": (config.variance_model, "variance model"),
        "WCSSRC": (wcs_source, "WCS from the asTrans solution or the fpC header"),
        **observation_time_cards(float(tsfield.mjd[f]), fpc, height, butler.path("fpC", data_id)),
    }
    return Exposure(image=image, mask=mask, variance=variance, wcs=wcs, psf=psf, photo_calib=photo_calib,
                    data_id=data_id, metadata=metadata)


def exposure_wcs(butler: Butler, data_id: DataId, fpc: FpcFrame, width: int, height: int, sip_degree: int,
                 source: str) -> tuple[WCS, str]:
    """The calexp WCS and where it came from (WCS_FROM_ASTRANS or WCS_FROM_FPC), as `source` asks.

    With "auto", a missing asTrans file, or a file without the frame's HDU or field row (fields at the start
    or end of a run), gives the fpC header's WCS and one WARNING naming what is missing.
    """
    fpc_path = butler.path("fpC", data_id)
    if source == "fpC":
        return wcs_from_fpc_header(fpc.header, fpc_path, width, height), WCS_FROM_FPC
    try:
        if not butler.exists("asTrans", data_id):
            raise MissingInputError(f"{butler.path('asTrans', data_id)}: asTrans file not found")
        astrans = butler.get("asTrans", data_id)
    except MissingInputError as err:
        if source == "asTrans":
            raise
        try:
            wcs = wcs_from_fpc_header(fpc.header, fpc_path, width, height)
        except InputError as header_err:
            raise InputError(f"{err}; and {header_err}") from header_err
        log.warning("%s; using the TAN WCS of the fpC header (%s)", err, fpc_path.name)
        return wcs, WCS_FROM_FPC
    return fit_tan_sip(astrans.pixel_to_sky, width=width, height=height, sip_degree=sip_degree), WCS_FROM_ASTRANS


def observation_time_cards(mjd_row0: float, fpc: FpcFrame, height: int, fpc_path: Path) -> dict[str, tuple]:
    """TIMESYS, MJD-AVG and DATE-AVG: the TAI mid-exposure averaged over the `height` rows kept.

    tsField `mjd` is when row 0 was read (= fpC TAI); row y is read C_OBS·y later and its charge collected
    during the preceding drift across the CCD (EXPTIME), so its mid-exposure is mjd + C_OBS·y - EXPTIME/2.
    """
    row_seconds = header_number(fpc.header, "C_OBS", fpc_path, "the primary header",  # [us] per row
                                default=fpc.exptime / 2048 * 1e6) * 1e-6
    mid = mjd_row0 + (row_seconds * (height - 1) / 2.0 - fpc.exptime / 2.0) / SECONDS_PER_DAY
    date = MJD_EPOCH + datetime.timedelta(milliseconds=round(mid * SECONDS_PER_DAY * 1000.0))
    return {
        "TIMESYS": ("TAI", "time scale of MJD-AVG, DATE-AVG and MJD"),
        "MJD-AVG": (mid, "[d] MJD (TAI) mid-exposure, mean over the rows"),
        "DATE-AVG": (date.isoformat(timespec="milliseconds"), "TAI mid-exposure, mean over the rows"),
    }
