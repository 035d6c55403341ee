"""The FITS decoding under the SDSS readers: bounded reads (gzip too), a structure check, extension headers,
binary tables and image data decoded straight from the file's bytes.

Every reader turns every malformed input into an `InputError` naming the file: the FITS parsing runs inside
`open_fits`, which converts the exceptions astropy raises on corrupt bytes, and the readers validate what
they take from the headers and tables before using it. Astropy parses the primary headers; the extension
headers (`parse_header`), the table rows and the fpC pixels are decoded straight from the file's bytes
(`FitsFile.header`, `FitsFile.table`, `FitsFile.data`), much cheaper than astropy's cards and columns.
"""

from __future__ import annotations

import io
import math
import re
import warnings
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from processccd.errors import InputError

if TYPE_CHECKING:
    from astropy.io import fits

READ_BLOCK = 1 << 22  # 4 MiB
GZIP_WBITS = 16 + zlib.MAX_WBITS  # zlib reads (and checks the CRC and length of) a gzip member
MAX_FITS_BYTES = 1 << 28  # 256 MiB: no SDSS input comes near; a larger (or decompressed) file is refused
FITS_BLOCK = 2880
FITS_CARD = 80
_STRUCTURE_KEY = re.compile(rb"(BITPIX|NAXIS[0-9]{0,3}|PCOUNT|GCOUNT|TFIELDS) *")
_INTEGER_VALUE = re.compile(rb" *[-+]?[0-9]{1,18} *(/.*)?")
_TFORM = re.compile(r" *([0-9]*)([LXBIJKAEDCMPQ])(.*)")
_STRING_VALUE = re.compile(r" *'((?:[^']|'')*)'")
_OTHER_VALUE = re.compile(r" *([TF]|[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[EDed][-+]?[0-9]+)?) *(?:/.*)?")
_INTEGER_TEXT = re.compile(r"[-+]?[0-9]+")
HeaderValue = str | bool | int | float | None
# TFORM letter -> bytes per element and the numpy type read (None: kept as raw bytes, never decoded)
_TFORM_TYPES: dict[str, tuple[int, str | None]] = {
    "L": (1, None), "X": (1, None), "B": (1, "u1"), "I": (2, ">i2"), "J": (4, ">i4"), "K": (8, ">i8"),
    "A": (1, "S"), "E": (4, ">f4"), "D": (8, ">f8"), "C": (8, None), "M": (16, None),
    "P": (8, ">i4"), "Q": (16, ">i8"),
}  # fmt: skip

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
)  # and astropy's VerifyError (`fits_read_errors`)


def fits_read_errors() -> tuple[type[BaseException], ...]:
    """FITS_READ_ERRORS and astropy's VerifyError: what parsing corrupt bytes may raise (astropy is imported on
    first use: reading the configuration needs none of it)."""
    from astropy.io.fits.verify import VerifyError

    return (*FITS_READ_ERRORS, VerifyError)


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


def _gunzip_bounded(compressed: bytes) -> bytes:
    """The gunzipped `compressed` (every gzip member in turn), at most MAX_FITS_BYTES + 1 bytes of it."""
    members = []
    size = 0
    remaining = compressed
    while remaining and size <= MAX_FITS_BYTES:
        inflater = zlib.decompressobj(GZIP_WBITS)
        member = inflater.decompress(remaining, MAX_FITS_BYTES + 1 - size)
        if not inflater.eof and not inflater.unconsumed_tail:
            raise EOFError("compressed file ended before the end-of-stream marker was reached")
        members.append(member)
        size += len(member)
        remaining = inflater.unused_data
    return b"".join(members)


def _read_bytes(path: Path, kind: str) -> bytes:
    """The bytes of the FITS file at `path`, gunzipped if it is gzip-compressed, at most MAX_FITS_BYTES."""
    try:
        with open(path, "rb") as stream:
            compressed = stream.read(2) == b"\x1f\x8b"
            stream.seek(0)
            raw = _read_bounded(stream)
        if compressed:
            raw = _gunzip_bounded(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise InputError(f"{path}: cannot read {kind} file ({type(exc).__name__}: {exc})") from exc
    if len(raw) > MAX_FITS_BYTES:
        raise InputError(f"{path}: {kind} file larger than {MAX_FITS_BYTES} bytes{' unzipped' if compressed else ''}")
    return raw


def _check_structure(raw: bytes, path: Path, kind: str) -> tuple[HduSpan, ...]:
    """Check the size keywords of every complete header, so that astropy never walks backwards or far.

    Returns where the header and the data of every HDU whose header is complete are in `raw`.

    BITPIX must be a FITS pixel size, NAXIS and TFIELDS 0-999, NAXISn and PCOUNT non-negative, GCOUNT
    positive (a negative data size would make astropy re-read the same HDUs forever, a huge TFIELDS build
    as many column objects). A file that ends inside a header or inside the data of its last HDU is
    truncated (bytes that are all NUL or blank after the last HDU are padding).
    """
    offset, index = 0, 0
    spans: list[HduSpan] = []
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
            break
        bitpix, naxis = values.get(b"BITPIX"), values.get(b"NAXIS", 0)
        axes = [values.get(b"NAXIS%d" % i, 0) for i in range(1, naxis + 1)] if 0 <= naxis <= 999 else [-1]
        pcount, gcount = values.get(b"PCOUNT", 0), values.get(b"GCOUNT", 1)
        valid = bitpix in (8, 16, 32, 64, -32, -64) and min(axes, default=0) >= 0 and pcount >= 0 and gcount >= 1
        if not valid or not 0 <= values.get(b"TFIELDS", 0) <= 999:
            raise InputError(f"{path}: cannot read {kind} file (HDU {index} has an invalid BITPIX, NAXIS, PCOUNT, "
                             "GCOUNT or TFIELDS)")
        data_bytes = abs(bitpix) // 8 * gcount * (pcount + math.prod(axes)) if naxis else 0
        spans.append(HduSpan(header_start=offset, header_end=end, data_start=position, data_size=data_bytes))
        offset = position + -(-data_bytes // FITS_BLOCK) * FITS_BLOCK
        index += 1
    if spans and spans[-1].data_start + spans[-1].data_size > len(raw):
        raise InputError(f"{path}: cannot read {kind} file (truncated: HDU {index - 1} has "
                         f"{len(raw) - spans[-1].data_start} of its {spans[-1].data_size} data bytes)")
    if raw[offset:].strip(b"\0 "):
        raise InputError(f"{path}: cannot read {kind} file (truncated or not FITS: no complete header at byte "
                         f"{offset})")
    return tuple(spans)


@dataclass(frozen=True)
class HduSpan:
    """Where one HDU is in the file's bytes: its header cards (up to the END card) and its data."""

    header_start: int
    header_end: int
    data_start: int
    data_size: int


def _card_value(field: str) -> HeaderValue:
    """The value in columns 11-80 of a header card: str, bool, int, float, or None if undefined or unparsable."""
    string = _STRING_VALUE.match(field)
    if string is not None:
        return string.group(1).replace("''", "'").rstrip()
    other = _OTHER_VALUE.fullmatch(field)
    if other is None:
        return None
    text = other.group(1)
    if text in ("T", "F"):
        return text == "T"
    if _INTEGER_TEXT.fullmatch(text):
        return int(text)
    return float(text.replace("D", "E"))


def parse_header(raw: bytes, span: HduSpan) -> dict[str, HeaderValue]:
    """Keyword -> value of the valued cards of the header at `span` (the first card of a repeated keyword)."""
    text = raw[span.header_start : span.header_end].decode("ascii", errors="replace")
    values: dict[str, HeaderValue] = {}
    for start in range(0, len(text), FITS_CARD):
        card = text[start : start + FITS_CARD]
        if card[8:10] == "= ":
            values.setdefault(card[:8].rstrip().upper(), _card_value(card[10:]))
    return values


def _is_array_element(letter: str) -> bool:
    """Whether `letter` is a type that variable-length (P/Q) arrays can hold and `BinTable` can decode."""
    return letter in _TFORM_TYPES and letter not in "PQ" and _TFORM_TYPES[letter][1] is not None


class BinTable:
    """The rows of a FITS binary table, decoded with numpy from the file's bytes.

    `column(name)` gives a fixed-size column (shape (n,) for one element per row, (n, repeat) otherwise;
    text as str), `variable_arrays(name)` the arrays of a variable-length (P/Q) column. Columns with
    TSCALn/TZEROn are refused (no SDSS input has them).
    """

    def __init__(self, rows: np.ndarray, heap: memoryview, fields: dict[str, tuple[str, str, str]]) -> None:
        self._rows = rows
        self._heap = heap
        self._fields = fields  # column name -> (field of `rows`, TFORM letter, element letter of P/Q)
        self.names = tuple(fields)

    def __len__(self) -> int:
        return len(self._rows)

    def column(self, name: str) -> np.ndarray:
        """The values of fixed-size column `name` (big-endian numbers as stored, text decoded as ASCII)."""
        field, letter, _element = self._fields[name]
        if letter in "PQ" or _TFORM_TYPES[letter][1] is None:
            raise ValueError(f"column {name} has TFORM letter {letter}, not a fixed-size number or text")
        values = self._rows[field]
        return np.char.decode(values, "ascii") if letter == "A" else values

    def variable_arrays(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(all elements of variable-length column `name` concatenated row after row, element count per row)."""
        field, letter, element = self._fields[name]
        if letter not in "PQ" or not _is_array_element(element):
            raise ValueError(f"column {name} is not a variable-length array of numbers or text (TFORM {letter}"
                             f"{element})")
        size, element_type = _TFORM_TYPES[element]
        descriptors = self._rows[field].astype(np.int64).reshape(len(self), -1)
        if descriptors.shape[1] != 2:
            raise ValueError(f"column {name}: {descriptors.shape[1] // 2} array descriptors per row, expected 1")
        counts, offsets = descriptors[:, 0], descriptors[:, 1]
        nbytes = counts * size
        if np.any(counts < 0) or np.any(offsets < 0) or np.any(offsets + nbytes > len(self._heap)):
            raise ValueError(f"column {name}: an array descriptor points outside the heap")
        total = int(nbytes.sum())
        if total > MAX_FITS_BYTES:
            raise ValueError(f"column {name}: {total} bytes of variable-length arrays")
        heap = np.frombuffer(self._heap, dtype=np.uint8)
        gathered = heap[np.arange(total) + np.repeat(offsets - (np.cumsum(nbytes) - nbytes), nbytes)]
        return gathered.view(element_type if element_type != "S" else "S1"), counts


@dataclass(frozen=True)
class FitsFile:
    """An open FITS file: astropy's HDUs (for the primary header), the file's bytes and where each HDU is."""

    hdul: fits.HDUList
    raw: bytes
    spans: tuple[HduSpan, ...]
    path: Path
    kind: str

    def __len__(self) -> int:
        """The number of HDUs with a complete header."""
        return len(self.spans)

    def _span(self, index: int) -> HduSpan:
        if not 0 <= index < len(self.spans):
            raise InputError(f"{self.path}: HDU {index} missing from the {self.kind} file")
        return self.spans[index]

    def header(self, index: int) -> dict[str, HeaderValue]:
        """The keywords of HDU `index` read from the header bytes (`parse_header`)."""
        return parse_header(self.raw, self._span(index))

    def data(self, index: int) -> memoryview:
        """The data bytes of HDU `index` (all present: `_check_structure` refuses truncated files)."""
        span = self._span(index)
        return memoryview(self.raw)[span.data_start : span.data_start + span.data_size]

    def table(self, index: int, what: str) -> BinTable:
        """HDU `index` as a binary table (InputError if it is missing, not a binary table or inconsistent).

        The table keywords are read from the header bytes (`parse_header`), much faster than astropy's cards.
        """
        header = self.header(index) if 0 <= index < len(self.spans) else {}
        if header.get("XTENSION") != "BINTABLE" or header.get("BITPIX") != 8 or header.get("NAXIS") != 2:
            raise InputError(f"{self.path}: HDU {index} missing or not a binary table ({what})")
        where = f"the header of HDU {index}"
        width = header_number(header, "NAXIS1", self.path, where, int)
        nrows = header_number(header, "NAXIS2", self.path, where, int)
        pcount = header_number(header, "PCOUNT", self.path, where, int, default=0)
        nfields = header_number(header, "TFIELDS", self.path, where, int)
        data = self.data(index)
        heap_start = header_number(header, "THEAP", self.path, where, int, default=width * nrows)
        if width * nrows + pcount != len(data) or not width * nrows <= heap_start <= len(data):
            raise InputError(f"{self.path}: HDU {index} ({what}): NAXIS1, NAXIS2, PCOUNT and THEAP disagree")
        names, formats, offsets = [], [], []
        fields: dict[str, tuple[str, str, str]] = {}
        position = 0
        for i in range(1, nfields + 1):
            if f"TSCAL{i}" in header or f"TZERO{i}" in header:
                raise InputError(f"{self.path}: HDU {index} ({what}): scaled column {i} (TSCAL/TZERO) not supported")
            tform = header_text(header, f"TFORM{i}", self.path, where)
            match = _TFORM.fullmatch(tform.upper())
            if match is None:
                raise InputError(f"{self.path}: HDU {index} ({what}): invalid TFORM{i} = {tform!r}")
            repeat = int(match.group(1) or 1)
            letter = match.group(2)
            size, element_type = _TFORM_TYPES[letter]
            nbytes = -(-repeat // 8) if letter == "X" else repeat * size
            field = f"f{i}"
            if nbytes and element_type is not None:
                names.append(field)
                offsets.append(position)
                if letter == "A":
                    formats.append(f"S{repeat}")
                else:
                    formats.append(np.dtype((element_type, (repeat * (2 if letter in "PQ" else 1),)))
                                   if repeat > 1 or letter in "PQ" else np.dtype(element_type))
            fields.setdefault(str(header.get(f"TTYPE{i}", "")), (field, letter, match.group(3)[:1]))
            position += nbytes
        if position > width:
            raise InputError(f"{self.path}: HDU {index} ({what}): columns of {position} bytes in rows of {width}")
        dtype = np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": width})
        return BinTable(np.ndarray((nrows,), dtype=dtype, buffer=data), data[heap_start:], fields)


@contextmanager
def open_fits(path: Path, kind: str) -> Iterator[FitsFile]:
    """Open the FITS file (optionally gzipped) at `path`; failures while it is open become InputError naming it.

    The file is read into memory (bounded by MAX_FITS_BYTES) and its HDU sizes checked before astropy
    parses it. A file shorter than its headers declare is an error (astropy only warns). The warnings
    astropy gives are passed on once the file is closed.
    """
    from astropy.io import fits

    raw = _read_bytes(path, kind)
    spans = _check_structure(raw, path, kind)
    read_errors = fits_read_errors()
    failure: BaseException | None = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            with fits.open(io.BytesIO(raw), memmap=False) as hdul:
                yield FitsFile(hdul, raw, spans, path, kind)
        except (InputError, *read_errors) as exc:
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


def header_number(header: Mapping[str, object], key: str, path: Path, where: str, kind: type[int] | type[float] = float,
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


def header_text(header: Mapping[str, object], key: str, path: Path, where: str, default: str | None = None) -> str:
    """Header keyword `key` as a string; missing (without default) or not a string is InputError."""
    if key not in header:
        if default is None:
            raise InputError(f"{path}: keyword {key} missing from {where}")
        return default
    value = header[key]
    if not isinstance(value, str):
        raise InputError(f"{path}: keyword {key} = {value!r} in {where} is not a string")
    return value
