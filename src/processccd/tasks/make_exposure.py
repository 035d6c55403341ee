"""make_exposure: the five SDSS inputs of one frame -> an `Exposure` (measurement-spec.md §1)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from processccd.butler import Butler
from processccd.dataid import DataId
from processccd.errors import InputError
from processccd.image import FPM_TO_MASK_PLANE, Exposure, PhotoCalib, mask_bit
from processccd.psf import SdssKLPsf
from processccd.sdss.fpm import paint_spans
from processccd.wcs import fit_tan_sip

log = logging.getLogger("processCcd")


@dataclass
class MakeExposureConfig:
    """How an SDSS frame becomes an exposure."""

    remove_pedestal: bool = True  # subtract the fpC SOFTBIAS (1000 DN)
    overlap_rows: int = 128  # rows at the top of the frame shared with the next field; removed
    # "lsst2013": (fpC - 1000)/gain as the 2013 stack; "physical": max(image, 0)/gain + dark_variance
    variance_model: Literal["lsst2013", "physical"] = "lsst2013"
    wcs_sip_degree: int = 3  # order of the TAN-SIP fitted to the exact asTrans transform
    psf_coordinate_offset: float = 0.0  # 0 as 2013 (psField polynomial in x, y); 0.5 for SDSS row/col


def make_exposure(butler: Butler, data_id: DataId, config: MakeExposureConfig | None = None) -> Exposure:
    """Read fpC, fpM, tsField, psField and asTrans for `data_id` and build the trimmed exposure."""
    config = config or MakeExposureConfig()
    fpc = butler.get("fpC", data_id)
    fpm = butler.get("fpM", data_id)
    tsfield = butler.get("tsField", data_id)
    psf_components = butler.get("psField", data_id)
    astrans = butler.get("asTrans", data_id)

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

    wcs = fit_tan_sip(astrans.pixel_to_sky, width=image.shape[1], height=height,
                      sip_degree=config.wcs_sip_degree)
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
    }
    return Exposure(image=image, mask=mask, variance=variance, wcs=wcs, psf=psf, photo_calib=photo_calib,
                    data_id=data_id, metadata=metadata)
