"""fpC: the SDSS corrected frame (uint16 DN with a 1000-DN soft bias, 2048 x 1489)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from processccd.errors import InputError
from processccd.sdss.fits import header_number, open_fits

if TYPE_CHECKING:
    from astropy.io import fits

FPC_SHAPE = (1489, 2048)  # (rows, columns) of an untrimmed SDSS frame
FPC_BITPIX = 16  # 16-bit pixels, stored signed with BZERO = 32768 (read back as uint16)
UINT16_BZERO = 32768.0
DEFAULT_SOFT_BIAS = 1000.0
DEFAULT_EXPTIME = 53.907456


@dataclass(frozen=True)
class FpcFrame:
    """An fpC frame: float32 DN including the soft bias, and the header values the pipeline uses."""

    image: np.ndarray
    soft_bias: float
    exptime: float
    header: fits.Header


def _check_image_header(header: fits.Header, path: Path) -> None:
    """The primary header must declare a 2048 x 1489 16-bit image (checked before any data is read)."""
    where = "the primary header"
    bitpix = header_number(header, "BITPIX", path, where, int)
    naxis = header_number(header, "NAXIS", path, where, int)
    if naxis != 2:
        raise InputError(f"{path}: fpC has no 2-d image in its primary HDU (NAXIS = {naxis})")
    shape = (header_number(header, "NAXIS2", path, where, int), header_number(header, "NAXIS1", path, where, int))
    if shape != FPC_SHAPE:
        raise InputError(f"{path}: fpC image has shape {shape}, expected {FPC_SHAPE}")
    if bitpix != FPC_BITPIX:
        raise InputError(f"{path}: fpC pixels have BITPIX {bitpix}, expected 16 (unsigned 16-bit integers)")


def read_fpc(path: Path | str) -> FpcFrame:
    """Read an fpC (optionally gzipped); the image is converted to float32 before any arithmetic.

    The pixels are decoded with numpy: stored big-endian int16 with BZERO 32768 and BSCALE 1, i.e. uint16
    with the sign bit flipped.
    """
    path = Path(path)
    with open_fits(path, "fpC") as fits_file:
        header = fits_file.hdul[0].header
        _check_image_header(header, path)
        where = "the primary header"
        scaling = (header_number(header, "BSCALE", path, where, default=1.0),
                   header_number(header, "BZERO", path, where, default=0.0))
        if scaling != (1.0, UINT16_BZERO) or "BLANK" in header:
            raise InputError(f"{path}: fpC pixels are not unsigned 16-bit integers (BSCALE, BZERO = {scaling}, "
                             "expected 1, 32768, and no BLANK)")
        stored = np.frombuffer(fits_file.data(0), dtype=">u2")
        image = (stored ^ np.uint16(0x8000)).astype(np.float32).reshape(FPC_SHAPE)
        soft_bias = header_number(header, "SOFTBIAS", path, "the primary header", default=DEFAULT_SOFT_BIAS)
        exptime = header_number(header, "EXPTIME", path, "the primary header", default=DEFAULT_EXPTIME)
    if soft_bias < 0:
        raise InputError(f"{path}: SOFTBIAS = {soft_bias} is negative")
    if exptime <= 0:
        raise InputError(f"{path}: EXPTIME = {exptime} is not positive")
    return FpcFrame(image=image, soft_bias=soft_bias, exptime=exptime, header=header)
