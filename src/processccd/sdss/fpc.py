"""fpC: the SDSS corrected frame (uint16 DN with a 1000-DN soft bias, 2048 x 1489)."""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from processccd.errors import InputError

FPC_SHAPE = (1489, 2048)  # (rows, columns) of an untrimmed SDSS frame


@dataclass(frozen=True)
class FpcFrame:
    """An fpC frame: float32 DN including the soft bias, and the header values the pipeline uses."""

    image: np.ndarray
    soft_bias: float
    exptime: float
    header: fits.Header


def read_fpc(path: Path | str) -> FpcFrame:
    """Read an fpC (optionally gzipped); the image is converted to float32 before any arithmetic."""
    path = Path(path)
    try:
        with fits.open(path, memmap=False) as hdul:
            header = hdul[0].header
            data = hdul[0].data
    except (OSError, EOFError, ValueError, TypeError, zlib.error, gzip.BadGzipFile) as err:
        raise InputError(f"{path}: not a readable fpC FITS file ({err})") from err
    if data is None or data.ndim != 2:
        raise InputError(f"{path}: fpC has no 2-d image in its primary HDU")
    if data.shape != FPC_SHAPE:
        raise InputError(f"{path}: fpC image has shape {data.shape}, expected {FPC_SHAPE}")
    if data.dtype.kind not in "iu":
        raise InputError(f"{path}: fpC pixels are {data.dtype}, expected 16-bit integers")
    try:
        soft_bias = float(header.get("SOFTBIAS", 1000))
        exptime = float(header.get("EXPTIME", 53.907456))
    except (TypeError, ValueError) as err:
        raise InputError(f"{path}: bad SOFTBIAS/EXPTIME keyword ({err})") from err
    return FpcFrame(image=data.astype(np.float32), soft_bias=soft_bias, exptime=exptime, header=header)
