"""Tests of the calexp FITS writer: `write_hdus` and `Exposure.write_fits` against astropy's `HDUList.writeto`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from processccd import __version__
from processccd.dataid import DataId
from processccd.image import MASK_PLANES, Exposure, PhotoCalib, read_calexp, write_float_image, write_hdus
from processccd.sdss.astrans import AsTrans
from processccd.wcs import fit_tan_sip
from reference_impl.psf import GaussianPsf

PIXEL_DEG = 0.396 / 3600.0


def test_write_hdus_is_byte_identical_to_astropy(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    image = rng.normal(size=(37, 53)).astype(np.float32)
    mask = rng.integers(0, 2**14, (37, 53)).astype(np.int32)
    header = fits.Header()
    header["BUNIT"] = "adu"

    def hdus() -> list[fits.PrimaryHDU | fits.ImageHDU]:
        primary = fits.PrimaryHDU()
        primary.header["ORIGIN"] = ("processccd", "software that wrote this file")
        primary.header.add_history("a: b")
        return [primary, fits.ImageHDU(image, header=header, name="IMAGE"), fits.ImageHDU(mask, name="MASK"),
                fits.ImageHDU(np.zeros((0,), dtype=np.float32), name="EMPTY")]

    write_hdus(tmp_path / "ours.fits", hdus())
    fits.HDUList(hdus()).writeto(tmp_path / "astropy.fits")
    assert (tmp_path / "ours.fits").read_bytes() == (tmp_path / "astropy.fits").read_bytes()
    assert image.dtype == np.float32 and image.flags.writeable  # the caller's arrays are left alone


def _sip_wcs(width: int, height: int) -> WCS:
    """A TAN-SIP WCS fitted to a distorted SDSS-like transform (the cards of a real calexp header)."""
    transform = AsTrans(
        a=351.5676, b=PIXEL_DEG, c=2e-8, d=-0.0090, e=1e-8, f=PIXEL_DEG,
        d_row=(-0.0192, 8.2e-5, -7.8e-8, 2.0e-11), d_col=(-0.078, 6.9e-4, -8.9e-7, 2.9e-10),
        cs_row=0.0, cs_col=0.0, cc_row=0.0, cc_col=0.0, ri_cut=100.0,
        node=95.0, incl=0.0, mjd=52931.2, airmass=1.2, mu_err=0.05, nu_err=0.06,
    )  # fmt: skip
    return fit_tan_sip(transform.pixel_to_sky, width=width, height=height)


def _astropy_calexp(exposure: Exposure, path: Path, provenance: dict[str, str]) -> None:
    """The calexp as astropy HDUs made with the WCS header (the reference for `Exposure.write_fits`)."""
    primary = fits.PrimaryHDU()
    hdr = primary.header
    hdr["ORIGIN"] = ("processccd", "software that wrote this file")
    hdr["PCCDVER"] = (__version__, "processccd version")
    for key, value in exposure.data_id.as_dict().items():
        if value is not None:
            hdr[key.upper()] = value
    hdr["EXPID"] = (exposure.exposure_id, "((run*10+filterIndex)*10+camcol)*10000+field")
    hdr["FLUXMAG0"] = (exposure.photo_calib.flux_mag0, "[DN] flux of a zero-magnitude source")
    hdr["HIERARCH FLUXMAG0ERR"] = (exposure.photo_calib.flux_mag0_err, "[DN] error")
    hdr["MAGZERO"] = (exposure.photo_calib.zero_point, "[mag] 2.5 log10(FLUXMAG0)")
    for key, value in exposure.metadata.items():
        hdr[key] = value
    for key, value in provenance.items():
        hdr.add_history(f"{key}: {value}")
    wcs_header = exposure.wcs.to_header(relax=True)
    image_hdu = fits.ImageHDU(exposure.image.astype(np.float32), header=wcs_header, name="IMAGE")
    image_hdu.header["BUNIT"] = "adu"
    mask_hdu = fits.ImageHDU(exposure.mask.astype(np.int32), header=wcs_header, name="MASK")
    for name, bit in MASK_PLANES.items():
        key = f"MP_{name}"
        mask_hdu.header[key if len(key) <= 8 else f"HIERARCH {key}"] = (bit, "mask plane bit index")
    variance_hdu = fits.ImageHDU(exposure.variance.astype(np.float32), header=wcs_header, name="VARIANCE")
    variance_hdu.header["BUNIT"] = "adu2"
    fits.HDUList([primary, image_hdu, mask_hdu, variance_hdu]).writeto(path)


@pytest.mark.parametrize(("height", "width", "image_dtype"), [(61, 83, np.float32), (40, 1, np.float64)])
def test_calexp_is_byte_identical_to_astropy_hdus(tmp_path: Path, height: int, width: int, image_dtype: type
                                                  ) -> None:
    rng = np.random.default_rng(5)
    exposure = Exposure(
        image=rng.normal(100.0, 30.0, (height, width)).astype(image_dtype),
        mask=rng.integers(0, 2**14, (height, width)).astype(np.uint16),
        variance=rng.uniform(1.0, 50.0, (height, width)).astype(np.float32),
        wcs=_sip_wcs(width, height), psf=GaussianPsf(1.4), photo_calib=PhotoCalib(1.5e11, 3.7e8),
        data_id=DataId(run=4192, camcol=4, field=300, filter="i", rerun=40),
        metadata={"EXPTIME": (53.907456, "[s] drift-scan exposure time"), "VARMODEL": ("lsst2013", "model")},
    )
    provenance = {"processccd": __version__, "fpC": "input/4192/40/corr/4/fpC-004192-i4-0300.fit.gz"}
    exposure.write_fits(tmp_path / "ours.fits", provenance)
    _astropy_calexp(exposure, tmp_path / "astropy.fits", provenance)
    assert (tmp_path / "ours.fits").read_bytes() == (tmp_path / "astropy.fits").read_bytes()
    calexp = read_calexp(tmp_path / "ours.fits")
    np.testing.assert_array_equal(calexp.mask, exposure.mask)
    np.testing.assert_array_equal(calexp.image, exposure.image.astype(np.float32))
    assert calexp.mask_planes == MASK_PLANES


def test_background_image_is_byte_identical_to_astropy(tmp_path: Path) -> None:
    """calexpBackground: `write_float_image` against the astropy HDUs it replaced."""
    rng = np.random.default_rng(7)
    data = rng.normal(100.0, 3.0, (45, 67)).astype(np.float32)
    wcs = _sip_wcs(67, 45)
    write_float_image(tmp_path / "ours.fits", data, [str(card) for card in wcs.to_header(relax=True).cards],
                      "BACKGROUND", "adu")
    hdu = fits.ImageHDU(data, header=wcs.to_header(relax=True), name="BACKGROUND")
    hdu.header["BUNIT"] = "adu"
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp_path / "astropy.fits")
    assert (tmp_path / "ours.fits").read_bytes() == (tmp_path / "astropy.fits").read_bytes()
