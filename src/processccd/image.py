"""`Exposure` (image, mask, variance, WCS, PSF, photometric calibration) and calexp FITS I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from processccd import __version__
from processccd.dataid import DataId
from processccd.psf import Psf

FITS_BLOCK = 2880  # bytes
WRITE_CHUNK = 1 << 17  # pixels converted to big-endian at a time when writing an image

# Mask planes: the LSST 2013 afw bits first (BAD..DETECTED_NEGATIVE), then the other SDSS fpM planes.
MASK_PLANES: dict[str, int] = {
    "BAD": 0,
    "SAT": 1,
    "INTRP": 2,
    "CR": 3,
    "EDGE": 4,
    "DETECTED": 5,
    "DETECTED_NEGATIVE": 6,
    "NOTCHECKED": 7,
    "OBJECT": 8,
    "BRIGHTOBJECT": 9,
    "BINOBJECT": 10,
    "CATOBJECT": 11,
    "SUBTRACTED": 12,
    "GHOST": 13,
}

# fpM plane name -> exposure mask plane name.
FPM_TO_MASK_PLANE: dict[str, str] = {
    "INTERP": "INTRP",
    "SATUR": "SAT",
    "CR": "CR",
    "NOTCHECKED": "NOTCHECKED",
    "OBJECT": "OBJECT",
    "BRIGHTOBJECT": "BRIGHTOBJECT",
    "BINOBJECT": "BINOBJECT",
    "CATOBJECT": "CATOBJECT",
    "SUBTRACTED": "SUBTRACTED",
    "GHOST": "GHOST",
}


def mask_bit(name: str) -> int:
    """The bit value (1 << plane index) of a mask plane."""
    return 1 << MASK_PLANES[name]


@dataclass(frozen=True)
class PhotoCalib:
    """Photometric zero point: flux (DN) of a 0-magnitude source, and its error."""

    flux_mag0: float
    flux_mag0_err: float

    @property
    def zero_point(self) -> float:
        return 2.5 * float(np.log10(self.flux_mag0))


@dataclass
class Exposure:
    """One calibrated-frame-in-progress. Arrays are [y, x]; x = column, y = row."""

    image: np.ndarray  # float32 DN above the soft bias (sky not subtracted until background)
    mask: np.ndarray  # uint16 bits of MASK_PLANES
    variance: np.ndarray  # float32 DN^2
    wcs: WCS
    psf: Psf
    photo_calib: PhotoCalib
    data_id: DataId
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def filter(self) -> str:
        return self.data_id.filter

    @property
    def exposure_id(self) -> int:
        return self.data_id.exposure_id

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape  # type: ignore[return-value]

    def write_fits(self, path: Path, provenance: dict[str, Any] | None = None) -> None:
        """Write a calexp: empty primary (metadata, provenance), IMAGE, MASK, VARIANCE extensions."""
        primary = fits.PrimaryHDU()
        hdr = primary.header
        hdr["ORIGIN"] = ("processccd", "software that wrote this file")
        hdr["PCCDVER"] = (__version__, "processccd version")
        for key, value in self.data_id.as_dict().items():
            if value is not None:
                hdr[key.upper()] = value
        hdr["EXPID"] = (self.exposure_id, "((run*10+filterIndex)*10+camcol)*10000+field")
        hdr["FLUXMAG0"] = (self.photo_calib.flux_mag0, "[DN] flux of a zero-magnitude source")
        hdr["HIERARCH FLUXMAG0ERR"] = (self.photo_calib.flux_mag0_err, "[DN] error")
        hdr["MAGZERO"] = (self.photo_calib.zero_point, "[mag] 2.5 log10(FLUXMAG0)")
        for key, value in self.metadata.items():
            hdr[key] = value  # metadata keys are FITS keywords (<= 8 characters), values scalars
        for key, value in (provenance or {}).items():
            hdr.add_history(f"{key}: {value}")
        wcs_header = self.wcs.to_header(relax=True)
        image_hdu = fits.ImageHDU(self.image.astype(np.float32, copy=False), header=wcs_header, name="IMAGE")
        image_hdu.header["BUNIT"] = "adu"
        mask_hdu = fits.ImageHDU(self.mask.astype(np.int32), header=wcs_header, name="MASK")
        for name, bit in MASK_PLANES.items():
            key = f"MP_{name}"
            mask_hdu.header[key if len(key) <= 8 else f"HIERARCH {key}"] = (bit, "mask plane bit index")
        variance_hdu = fits.ImageHDU(self.variance.astype(np.float32, copy=False), header=wcs_header,
                                     name="VARIANCE")
        variance_hdu.header["BUNIT"] = "adu2"
        write_hdus(path, [primary, image_hdu, mask_hdu, variance_hdu])


def write_hdus(path: Path, hdus: list[fits.PrimaryHDU | fits.ImageHDU]) -> None:
    """Write image HDUs as `fits.HDUList(hdus).writeto` does, with one big-endian copy of each array.

    The headers are astropy's; the pixels are converted to big-endian block by block (a small buffer,
    instead of astropy's in-place byte swap there and back and its second verification) and followed by
    the zero padding of the last FITS block.
    """
    with open(path, "wb") as stream:
        for hdu in hdus:
            stream.write(hdu.header.tostring().encode("ascii"))
            if hdu.data is None:
                continue
            flat = hdu.data.reshape(-1)
            big_endian = flat.dtype.newbyteorder(">")
            for start in range(0, flat.size, WRITE_CHUNK):
                stream.write(flat[start : start + WRITE_CHUNK].astype(big_endian).tobytes())
            stream.write(bytes(-flat.nbytes % FITS_BLOCK))


@dataclass(frozen=True)
class Calexp:
    """A calexp read back from FITS: arrays, WCS and the primary header."""

    image: np.ndarray
    mask: np.ndarray
    variance: np.ndarray
    wcs: WCS
    header: fits.Header
    mask_planes: dict[str, int]


def read_calexp(path: Path) -> Calexp:
    """Read a calexp written by `Exposure.write_fits`."""
    with fits.open(path) as hdul:
        image_hdu = hdul["IMAGE"]
        mask_header = hdul["MASK"].header
        planes = {key[3:]: int(value) for key, value in mask_header.items() if key.startswith("MP_")}
        return Calexp(
            image=np.asarray(image_hdu.data),
            mask=np.asarray(hdul["MASK"].data),
            variance=np.asarray(hdul["VARIANCE"].data),
            wcs=WCS(image_hdu.header),
            header=hdul[0].header.copy(),
            mask_planes=planes,
        )
