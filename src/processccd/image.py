"""`Exposure` (image, mask, variance, WCS, PSF, photometric calibration) and calexp FITS I/O."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from processccd import __version__
from processccd.dataid import DataId
from processccd.psf import Psf

if TYPE_CHECKING:
    from astropy.io import fits
    from astropy.wcs import WCS

FITS_BLOCK = 2880  # bytes
FITS_CARD = 80  # characters
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

    def wcs_cards(self) -> list[str]:
        """The card images of the WCS header (`wcs.to_header(relax=True)`) that the image extensions carry."""
        return [str(card) for card in self.wcs.to_header(relax=True).cards]

    def write_fits(self, path: Path, provenance: dict[str, Any] | None = None, compression: str = "none",
                   quantize_level: float = 16.0, wcs_cards: list[str] | None = None) -> None:
        """Write a calexp: empty primary (metadata, provenance), IMAGE, MASK, VARIANCE extensions.

        `compression` "lossless" or "rice" writes the three planes as tile-compressed image HDUs
        (`compressed_plane`); "none" (the default) writes them as plain image extensions. `wcs_cards`: those of
        `self.wcs_cards()`, when the caller has them already.

        The bytes are those of `fits.HDUList` of astropy `ImageHDU`s made with the WCS header (the MASK as
        int32); the extension headers are assembled from card images (`image_extension_header`).
        """
        from astropy.io import fits  # on first use: reading the configuration needs no astropy

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
        wcs_cards = self.wcs_cards() if wcs_cards is None else wcs_cards
        extensions = []
        for name, data, stored, cards in (("IMAGE", self.image, FLOAT32, _unit_cards("adu")),
                                          ("MASK", self.mask, INT32, _mask_plane_cards()),
                                          ("VARIANCE", self.variance, FLOAT32, _unit_cards("adu2"))):
            if compression != "none":
                extensions.append(compressed_plane(name, data.astype(stored.newbyteorder("="), copy=False),
                                                   [*wcs_cards, *cards], compression, quantize_level))
                continue
            header = image_extension_header(stored, data.shape, [*wcs_cards, *_extname_cards(name), *cards])
            extensions.append(RawImageHdu(header, data, stored))
        if compression != "none":
            fits.HDUList([primary, *extensions]).writeto(path)
            return
        write_hdus(path, [primary, *extensions])


def write_float_image(path: Path, data: np.ndarray, wcs_cards: list[str], name: str, unit: str) -> None:
    """An empty primary HDU and one float32 image extension `name` with the WCS cards and BUNIT `unit`: the bytes
    of `fits.ImageHDU(data, header=the WCS header, name=name)` with `header["BUNIT"] = unit`, as astropy writes
    them after an empty `PrimaryHDU`."""
    from astropy.io import fits

    header = image_extension_header(FLOAT32, data.shape, [*wcs_cards, *_extname_cards(name), *_unit_cards(unit)])
    write_hdus(path, [fits.PrimaryHDU(), RawImageHdu(header, data, FLOAT32)])


DITHER_SEED_CHECKSUM = -1  # astropy/cfitsio: the dither seed comes from the checksum of the first tile
RICE_TILE_ROWS = 16
COMPRESSION_TYPES = {"lossless": {"IMAGE": "GZIP_2", "MASK": "RICE_1", "VARIANCE": "GZIP_2"},
                     "rice": {"IMAGE": "RICE_1", "MASK": "RICE_1", "VARIANCE": "RICE_1"}}


def compressed_plane(name: str, data: np.ndarray, cards: list[str], compression: str, quantize_level: float
                     ) -> fits.CompImageHDU:
    """One calexp plane as a tile-compressed HDU (row tiles): "lossless" = GZIP_2 without quantisation for
    float planes, RICE_1 for the integer MASK (every pixel reads back exactly); "rice" = RICE_1, float planes
    quantised to steps of (tile noise) / quantize_level with subtractive dithering, seeded from the tile
    checksum so that the file is reproducible (the MASK stays exact). The "lossless" files differ from run to run
    in the gzip time stamps of the tiles (Python's gzip.compress, which astropy calls, writes the current time),
    not in their pixels."""
    from astropy.io import fits

    floating = data.dtype.kind == "f"
    quantize = 0.0 if compression == "lossless" and floating else quantize_level
    header = fits.Header([fits.Card.fromstring(card) for card in cards])
    compression_type = COMPRESSION_TYPES[compression][name]
    # RICE_1: tiles of RICE_TILE_ROWS rows (30% less CPU than astropy's one-row tiles, same size; measured);
    # GZIP_2 (gzip level 9): one-row tiles, larger ones cost more CPU for 5-10% smaller files
    tile_shape = (min(RICE_TILE_ROWS, data.shape[0]), data.shape[1]) if compression_type == "RICE_1" else None
    return fits.CompImageHDU(data, header=header, name=name, compression_type=compression_type,
                             quantize_level=quantize, quantize_method=1 if floating else -1,
                             dither_seed=DITHER_SEED_CHECKSUM, tile_shape=tile_shape)


FLOAT32 = np.dtype(">f4")
INT32 = np.dtype(">i4")
END_CARD = "END".ljust(FITS_CARD)


@dataclass(frozen=True)
class RawImageHdu:
    """An image HDU for `write_hdus`: its header text (card images up to END, padded to whole FITS blocks)
    and its pixels, stored as the big-endian FITS type `stored` (which its header declares)."""

    header: str
    data: np.ndarray
    stored: np.dtype


@functools.cache
def _image_structure_cards(stored: np.dtype, shape: tuple[int, ...]) -> tuple[str, ...]:
    """The cards astropy begins an image extension of this type and shape with (XTENSION ... GCOUNT)."""
    from astropy.io import fits

    return tuple(str(card) for card in fits.ImageHDU(np.empty(shape, dtype=stored)).header.cards)


@functools.cache
def _extname_cards(name: str) -> tuple[str, ...]:
    from astropy.io import fits

    return (str(fits.Card("EXTNAME", name, "extension name")),)


@functools.cache
def _unit_cards(unit: str) -> tuple[str, ...]:
    from astropy.io import fits

    return (str(fits.Card("BUNIT", unit)),)


@functools.cache
def _mask_plane_cards() -> tuple[str, ...]:
    """MP_<plane> = bit index, the mask-plane dictionary of the MASK extension."""
    from astropy.io import fits

    keys = (f"MP_{name}" for name in MASK_PLANES)
    return tuple(str(fits.Card(key if len(key) <= 8 else f"HIERARCH {key}", bit, "mask plane bit index"))
                 for key, bit in zip(keys, MASK_PLANES.values(), strict=True))


def image_extension_header(stored: np.dtype, shape: tuple[int, ...], cards: list[str]) -> str:
    """The header astropy writes for `ImageHDU(data of type stored and this shape, header=cards)` as
    text: its structure cards, `cards` (80-character card images), END, blank-padded to whole blocks."""
    text = "".join((*_image_structure_cards(stored, shape), *cards, END_CARD))
    return text + " " * (-len(text) % FITS_BLOCK)


def write_hdus(path: Path, hdus: list[fits.PrimaryHDU | fits.ImageHDU | RawImageHdu]) -> None:
    """Write image HDUs as `fits.HDUList(hdus).writeto` does, with one big-endian copy of each array.

    The headers are astropy's (or the text of a `RawImageHdu`); the pixels are converted to big-endian
    block by block (a small buffer, instead of astropy's in-place byte swap there and back and its
    second verification) and followed by the zero padding of the last FITS block.
    """
    with open(path, "wb") as stream:
        for hdu in hdus:
            if isinstance(hdu, RawImageHdu):
                header, data, stored = hdu.header, hdu.data, hdu.stored
            else:
                header, data = hdu.header.tostring(), hdu.data
                stored = None if data is None else data.dtype.newbyteorder(">")
            stream.write(header.encode("ascii"))
            if data is None or stored is None:
                continue
            flat = data.reshape(-1)
            for start in range(0, flat.size, WRITE_CHUNK):
                stream.write(flat[start : start + WRITE_CHUNK].astype(stored))
            stream.write(bytes(-flat.size * stored.itemsize % FITS_BLOCK))


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
    from astropy.io import fits
    from astropy.wcs import WCS

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
