"""Tests of the calexp FITS writer: `write_hdus` against astropy's `HDUList.writeto`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

from processccd.image import write_hdus


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
