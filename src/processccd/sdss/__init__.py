"""Readers of the five SDSS imaging formats; they return plain arrays and objects.

Every reader turns every malformed input into an `InputError` naming the file: the FITS parsing runs inside
`open_fits`, which converts the exceptions astropy raises on corrupt bytes, and the readers validate what
they take from the headers and tables before using it.
"""

from __future__ import annotations

import gzip
import io
import math
import re
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from astropy.io import fits
from astropy.io.fits.verify import VerifyError

from processccd.errors import InputError

READ_BLOCK = 1 << 22  # 4 MiB
MAX_FITS_BYTES = 1 << 28  # 256 MiB: no SDSS input comes near; a larger (or decompressed) file is refused
FITS_BLOCK = 2880
FITS_CARD = 80
_STRUCTURE_KEY = re.compile(rb"(BITPIX|NAXIS[0-9]{0,3}|PCOUNT|GCOUNT|TFIELDS) *")
_INTEGER_VALUE = re.compile(rb" *[-+]?[0-9]{1,18} *(/.*)?")

# What astropy raises on corrupt FITS bytes (it also uses assertions to validate column definitions).
FITS_READ_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes gzip.BadGzipFile
    EOFError,
    ValueError,  # includes UnicodeDecodeError
    TypeError,
    IndexError,
    KeyError,
    AttributeError,
    AssertionError,
    ArithmeticError,
    MemoryError,
    RecursionError,
    zlib.error,
    VerifyError,
)


def _read_bounded(stream: BinaryIO) -> bytes:
    """At most MAX_FITS_BYTES + 1 bytes of `stream`, read in blocks (read(n) would allocate n bytes at once)."""
    blocks = []
    size = 0
    while size <= MAX_FITS_BYTES:
        block = stream.read(READ_BLOCK)
        if not block:
            break
        blocks.append(block)
        size += len(block)
    return b"".join(blocks)


def _read_bytes(path: Path, kind: str) -> bytes:
    """The bytes of the FITS file at `path`, gunzipped if it is gzip-compressed, at most MAX_FITS_BYTES."""
    try:
        with open(path, "rb") as stream:
            compressed = stream.read(2) == b"\x1f\x8b"
            stream.seek(0)
            if compressed:
                with gzip.GzipFile(fileobj=stream) as unzipped:
                    raw = _read_bounded(unzipped)
            else:
                raw = _read_bounded(stream)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: cannot read {kind} file ({type(exc).__name__}: {exc})") from exc
    if len(raw) > MAX_FITS_BYTES:
        raise InputError(f"{path}: {kind} file larger than {MAX_FITS_BYTES} bytes{' unzipped' if compressed else ''}")
    return raw


def _check_structure(raw: bytes, path: Path, kind: str) -> None:
    """Check the size keywords of every complete header, so that astropy never walks backwards or far.

    BITPIX must be a FITS pixel size, NAXIS and TFIELDS 0-999, NAXISn and PCOUNT non-negative, GCOUNT
    positive (a negative data size would make astropy re-read the same HDUs forever, a huge TFIELDS build
    as many column objects). Truncated files are left to astropy, which reports them.
    """
    offset, index = 0, 0
    while offset + FITS_BLOCK <= len(raw):
        values: dict[bytes, int] = {}
        end = -1
        position = offset
        while end < 0 and position + FITS_BLOCK <= len(raw):
            for start in range(position, position + FITS_BLOCK, FITS_CARD):
                card = raw[start : start + FITS_CARD]
                if card[:8].rstrip() == b"END":
                    end = start
                    break
                key = _STRUCTURE_KEY.fullmatch(card[:8])
                if key is None or card[8:10] != b"= " or key.group(1) in values:
                    continue
                if _INTEGER_VALUE.fullmatch(card[10:]) is None:
                    name = key.group(1).decode()
                    raise InputError(f"{path}: cannot read {kind} file (keyword {name} of HDU {index} is not an "
                                     "integer)")
                values[key.group(1)] = int(card[10:].split(b"/")[0])
            position += FITS_BLOCK
        if end < 0:
            return
        bitpix, naxis = values.get(b"BITPIX"), values.get(b"NAXIS", 0)
        axes = [values.get(b"NAXIS%d" % i, 0) for i in range(1, naxis + 1)] if 0 <= naxis <= 999 else [-1]
        pcount, gcount = values.get(b"PCOUNT", 0), values.get(b"GCOUNT", 1)
        valid = bitpix in (8, 16, 32, 64, -32, -64) and min(axes, default=0) >= 0 and pcount >= 0 and gcount >= 1
        if not valid or not 0 <= values.get(b"TFIELDS", 0) <= 999:
            raise InputError(f"{path}: cannot read {kind} file (HDU {index} has an invalid BITPIX, NAXIS, PCOUNT, "
                             "GCOUNT or TFIELDS)")
        data_bytes = abs(bitpix) // 8 * gcount * (pcount + math.prod(axes)) if naxis else 0
        offset = position + -(-data_bytes // FITS_BLOCK) * FITS_BLOCK
        index += 1


@contextmanager
def open_fits(path: Path, kind: str) -> Iterator[fits.HDUList]:
    """Open the FITS file (optionally gzipped) at `path`; failures while it is open become InputError naming it.

    The file is read into memory (bounded by MAX_FITS_BYTES) and its HDU sizes checked before astropy
    parses it. A file shorter than its headers declare is an error (astropy only warns). The warnings
    astropy gives are passed on once the file is closed.
    """
    raw = _read_bytes(path, kind)
    _check_structure(raw, path, kind)
    failure: BaseException | None = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with fits.open(io.BytesIO(raw), memmap=False) as hdul:
                yield hdul
        except (InputError, *FITS_READ_ERRORS) as exc:
            failure = exc
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    truncation = next((str(w.message) for w in caught if "truncated" in str(w.message)), None)
    if truncation is not None:
        raise InputError(f"{path}: cannot read {kind} file (truncated: {truncation})") from failure
    if isinstance(failure, InputError):
        raise failure
    if failure is not None:
        raise InputError(f"{path}: cannot read {kind} file ({type(failure).__name__}: {failure})") from failure


def table_hdu(hdul: fits.HDUList, index: int, path: Path, what: str) -> fits.BinTableHDU:
    """HDU `index` of `hdul`, checked to exist and to be a binary table."""
    if not 0 <= index < len(hdul) or not isinstance(hdul[index], fits.BinTableHDU):
        raise InputError(f"{path}: HDU {index} missing or not a binary table ({what})")
    return hdul[index]


def header_number(header: fits.Header, key: str, path: Path, where: str, kind: type[int] | type[float] = float,
                  default: float | None = None) -> float:
    """Header keyword `key` as a finite int or float; missing (without default) or non-numeric is InputError.

    Numbers written as strings are accepted (SDSS fpC headers have EXPTIME = '53.907456').
    """
    if key not in header:
        if default is None:
            raise InputError(f"{path}: keyword {key} missing from {where}")
        return kind(default)
    raw = header[key]
    value: object = raw
    if isinstance(raw, str):
        try:
            value = float(raw)
        except ValueError:
            value = None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{path}: keyword {key} = {raw!r} in {where} is not a number")
    if not math.isfinite(value):
        raise InputError(f"{path}: keyword {key} = {raw!r} in {where} is not finite")
    if kind is int:
        if not float(value).is_integer():
            raise InputError(f"{path}: keyword {key} = {raw!r} in {where} is not an integer")
        return int(value)
    return float(value)


def header_text(header: fits.Header, key: str, path: Path, where: str, default: str | None = None) -> str:
    """Header keyword `key` as a string; missing (without default) or not a string is InputError."""
    if key not in header:
        if default is None:
            raise InputError(f"{path}: keyword {key} missing from {where}")
        return default
    value = header[key]
    if not isinstance(value, str):
        raise InputError(f"{path}: keyword {key} = {value!r} in {where} is not a string")
    return value
