"""Source-catalogue schema (name, dtype, unit, description) and FITS table I/O.

astropy is imported only by the functions that need it: `read_source_columns` reads the tables this
module writes with numpy alone, so that `export-results` starts fast.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from astropy.table import Table

FITS_BLOCK = 2880  # bytes
FITS_CARD = 80  # characters
# TFORM of the columns write_source_table writes -> big-endian numpy type (L: the logicals 'T'/'F')
_TFORM_TYPES = {"K": ">i8", "J": ">i4", "I": ">i2", "D": ">f8", "E": ">f4", "L": "u1"}
_CARD_VALUE = re.compile(r"'((?:[^']|'')*)'|([-+]?[0-9]+)")


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str
    unit: str
    doc: str


def _flux(prefix: str, doc: str) -> list[Column]:
    return [Column(prefix, "f8", "adu", doc), Column(f"{prefix}.err", "f8", "adu", f"error of {prefix}")]


SOURCE_SCHEMA: list[Column] = [
    Column("id", "i8", "", "unique source id: exposure id << 26 | sequence number"),
    Column("coord.ra", "f8", "deg", "right ascension (ICRS) of the centroid"),
    Column("coord.dec", "f8", "deg", "declination (ICRS) of the centroid"),
    Column("flags.negative", "?", "", "detected as a negative footprint"),
    Column("flags.badcentroid", "?", "", "centroid.sdss failed; the centroid is the peak pixel"),
    Column("flags.pixel.edge", "?", "", "centre outside the image or EDGE pixel in the footprint"),
    Column("flags.pixel.interpolated.any", "?", "", "INTRP pixel in the footprint"),
    Column("flags.pixel.interpolated.center", "?", "", "INTRP pixel in the central 3x3"),
    Column("flags.pixel.saturated.any", "?", "", "SAT pixel in the footprint"),
    Column("flags.pixel.saturated.center", "?", "", "SAT pixel in the central 3x3"),
    Column("centroid.sdss.x", "f8", "pix", "SDSS centroid, column (0-based pixel centres)"),
    Column("centroid.sdss.y", "f8", "pix", "SDSS centroid, row (0-based pixel centres)"),
    Column("centroid.sdss.err.xx", "f4", "pix2", "variance of centroid.sdss.x"),
    Column("centroid.sdss.err.yy", "f4", "pix2", "variance of centroid.sdss.y"),
    Column("centroid.gaussian.x", "f8", "pix", "centre of a 2-d Gaussian fit, column"),
    Column("centroid.gaussian.y", "f8", "pix", "centre of a 2-d Gaussian fit, row"),
    Column("centroid.gaussian.err.xx", "f4", "pix2", "variance of centroid.gaussian.x (not computed)"),
    Column("centroid.gaussian.err.yy", "f4", "pix2", "variance of centroid.gaussian.y (not computed)"),
    Column("shape.sdss.ixx", "f8", "pix2", "adaptive second moment xx"),
    Column("shape.sdss.ixy", "f8", "pix2", "adaptive second moment xy"),
    Column("shape.sdss.iyy", "f8", "pix2", "adaptive second moment yy"),
    Column("shape.sdss.err.ixx", "f4", "pix4", "variance of shape.sdss.ixx"),
    Column("shape.sdss.err.ixy", "f4", "pix4", "variance of shape.sdss.ixy"),
    Column("shape.sdss.err.iyy", "f4", "pix4", "variance of shape.sdss.iyy"),
    Column("shape.sdss.flags", "?", "", "adaptive moments failed or fell back to unweighted moments"),
    *_flux("flux.gaussian", "adaptive elliptical Gaussian flux, PSF-factor scaled and aperture corrected"),
    *_flux("flux.psf", "PSF-weighted flux, aperture corrected"),
    *_flux("flux.sinc", "band-limited circular aperture flux, radius 7 pixels"),
    *_flux("multishapelet.exp.flux", "exponential model flux"),
    *_flux("multishapelet.dev.flux", "de Vaucouleurs model flux"),
    *_flux("multishapelet.combo.flux", "exponential + de Vaucouleurs model flux"),
    Column("classification.extendedness", "f8", "", "0 for point sources, 1 for extended ones"),
    Column("aperturecorrection", "f8", "", "aperture correction applied to flux.psf"),
    Column("aperturecorrection.err", "f8", "", "error of the aperture correction"),
]

# Columns beyond the 40 of the 2013 list, kept for diagnostics.
EXTRA_SCHEMA: list[Column] = [
    Column("peak.x", "i4", "pix", "peak pixel of the smoothed image, column"),
    Column("peak.y", "i4", "pix", "peak pixel of the smoothed image, row"),
    Column("footprint.npix", "i4", "", "number of pixels in the (ungrown) footprint"),
    Column("flux.psf.raw", "f8", "adu", "flux.psf before aperture correction"),
    Column("flux.psf.psffactor", "f8", "", "PSF factor of flux.psf (sum of the peak-normalised PSF)"),
    Column("flux.gaussian.psffactor", "f8", "", "PSF factor of flux.gaussian (flux scaled by p_psf / p)"),
    Column("multishapelet.exp.psffactor", "f8", "", "PSF factor of multishapelet.exp.flux"),
    Column("multishapelet.dev.psffactor", "f8", "", "PSF factor of multishapelet.dev.flux"),
    Column("multishapelet.combo.psffactor", "f8", "", "PSF factor of multishapelet.combo.flux"),
    Column("flux.gaussian.flags", "?", "", "flux.gaussian failed: unweighted, maxiter, shift > shiftmax or NaN"),
]


# Columns of the LSST-2020 profile's measurements, present only when they are configured (MeasurementConfig).
def circular_aperture_prefix(radius: float) -> str:
    """'flux.circular.4_5' for 4.5 px (LSST's base_CircularApertureFlux_4_5)."""
    return "flux.circular." + f"{float(radius):.1f}".replace(".", "_")


def circular_aperture_schema(radii: tuple[float, ...]) -> list[Column]:
    """flux, error and flags of the circular aperture flux of each radius."""
    columns = []
    for radius in radii:
        prefix = circular_aperture_prefix(radius)
        columns += [*_flux(prefix, f"flux in a circle of radius {radius:g} px (exact pixel overlap)"),
                    Column(f"{prefix}.flags.offimage", "?", "", "the aperture is not entirely on the image"),
                    Column(f"{prefix}.flags.masked", "?", "", "a BAD, SAT, INTRP or CR pixel overlaps the aperture")]
    return columns


KRON_SCHEMA: list[Column] = [
    *_flux("flux.kron", "Kron (SExtractor AUTO) flux, factor 2.5, minimum radius 3.5"),
    Column("flux.kron.radius", "f8", "", "Kron radius in units of the adaptive-moment ellipse (sep)"),
    Column("flux.kron.flags", "?", "", "no shape, Kron radius or sum failed (sep flags)"),
]

DEBLEND_SCHEMA: list[Column] = [
    Column("parent", "i8", "", "id of the parent of a deblended child; 0 for a parent or isolated source"),
    Column("deblend.nchild", "i4", "", "number of deblended children of this footprint (0: not deblended)"),
]


def empty_columns(n: int, schema: list[Column]) -> dict[str, np.ndarray]:
    """Columns of length n with their initial values: NaN for floats, False for flags, 0 for ints."""
    columns = {}
    for col in schema:
        if col.dtype == "?":
            columns[col.name] = np.zeros(n, dtype=bool)
        elif col.dtype.startswith("f"):
            columns[col.name] = np.full(n, np.nan, dtype=col.dtype)
        else:
            columns[col.name] = np.zeros(n, dtype=col.dtype)
    return columns


@functools.cache
def _table_header_cards(schema: tuple[Column, ...], column_docs: bool = True) -> tuple[str, ...]:
    """The 80-character header cards of a source table of `schema` with no rows, up to its TDOCn cards (none
    without `column_docs`).

    Made once per schema by astropy (`table_to_hdu` of an empty table with units), so that the cards are
    exactly those astropy writes; only NAXIS2 depends on the number of rows.
    """
    from astropy.io import fits
    from astropy.table import Table

    table = Table()
    for col in schema:
        table[col.name] = np.zeros(0, dtype=col.dtype)
        if col.unit:
            table[col.name].unit = col.unit
    header = fits.table_to_hdu(table).header
    for i, col in enumerate(schema if column_docs else (), start=1):
        header[f"TDOC{i}"] = col.doc[:68]
    return tuple(str(card) for card in header.cards)


def _fits_blocks(blob: bytes, fill: bytes) -> bytes:
    """`blob` padded with `fill` to a whole number of 2880-byte FITS blocks."""
    return blob + fill * (-len(blob) % FITS_BLOCK)


def write_source_table(path: Path, columns: dict[str, np.ndarray], schema: list[Column],
                       header: dict[str, Any] | None = None, column_docs: bool = True) -> None:
    """Write a FITS binary table with units and column descriptions (TDOCn; none without `column_docs`) in the
    header.

    The bytes are those astropy writes for the table (`_table_header_cards`), assembled with numpy:
    big-endian rows, booleans as the FITS logicals 'T'/'F'. Without `column_docs`, they are the bytes of
    `astropy.table.Table.write` of the columns with their units and `header` as the table's meta.
    """
    from astropy.io import fits

    rows = np.empty(len(columns[schema[0].name]) if schema else 0,
                    dtype=[(col.name, np.dtype("u1" if col.dtype == "?" else col.dtype).newbyteorder(">"))
                           for col in schema])
    for col in schema:
        values = np.asarray(columns[col.name], dtype=col.dtype)
        rows[col.name] = np.where(values, ord("T"), ord("F")) if col.dtype == "?" else values
    cards = list(_table_header_cards(tuple(schema), column_docs))
    naxis2 = next(i for i, card in enumerate(cards) if card.startswith("NAXIS2  ="))
    cards[naxis2] = str(fits.Card("NAXIS2", len(rows), "length of dimension 2"))
    cards.extend(str(fits.Card(key, value)) for key, value in (header or {}).items())
    cards.append("END".ljust(FITS_CARD))
    with open(path, "wb") as stream:
        stream.write(_primary_header_block())
        stream.write(_fits_blocks("".join(cards).encode("ascii"), b" "))
        stream.write(_fits_blocks(rows.tobytes(), b"\0"))


@functools.cache
def _primary_header_block() -> bytes:
    """The header block of an empty primary HDU, as astropy writes it."""
    from astropy.io import fits

    return fits.PrimaryHDU().header.tostring().encode("ascii")


def read_source_table(path: Path) -> Table:
    """Read a source table written by `write_source_table` (column names as in the schema)."""
    from astropy.table import Table

    return Table.read(path, hdu=1, unit_parse_strict="silent")


def _header_values(raw: bytes, start: int, path: Path) -> tuple[dict[str, str | int], int]:
    """The string and integer keywords of the header at `start` of `raw`, and where its data begins."""
    values: dict[str, str | int] = {}
    for position in range(start, len(raw) - FITS_CARD + 1, FITS_CARD):
        card = raw[position : position + FITS_CARD].decode("ascii")
        key = card[:8].rstrip()
        if key == "END":
            end = position + FITS_CARD
            return values, end + -end % FITS_BLOCK
        match = _CARD_VALUE.match(card[10:].lstrip()) if card[8:10] == "= " else None
        if match is not None:
            text, number = match.groups()
            values.setdefault(key, text.replace("''", "'").rstrip() if number is None else int(number))
    raise ValueError(f"{path}: FITS header at byte {start} has no END card")


def source_column_names(path: Path) -> tuple[str, ...]:
    """The column names of a source table written by `write_source_table` (numpy alone, as read_source_columns)."""
    raw = Path(path).read_bytes()
    _, table_start = _header_values(raw, 0, path)
    header, _ = _header_values(raw, table_start, path)
    return tuple(str(header.get(f"TTYPE{i}", "")) for i in range(1, int(header.get("TFIELDS", 0)) + 1))


def read_source_columns(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Columns `names` of a source table written by `write_source_table`, read with numpy alone.

    Numbers come back in native byte order, logicals as bool. A file this module did not write (or a
    damaged one) raises ValueError or OSError.
    """
    raw = Path(path).read_bytes()
    primary, table_start = _header_values(raw, 0, path)
    if primary.get("NAXIS") != 0:
        raise ValueError(f"{path}: the primary HDU of a source table holds data")
    header, data_start = _header_values(raw, table_start, path)
    if header.get("XTENSION") != "BINTABLE":
        raise ValueError(f"{path}: HDU 1 is not a binary table")
    fields: dict[str, tuple[str, int]] = {}
    offset = 0
    for i in range(1, int(header.get("TFIELDS", 0)) + 1):
        tform = str(header.get(f"TFORM{i}", ""))
        if tform not in _TFORM_TYPES:
            raise ValueError(f"{path}: TFORM{i} = {tform!r} is not a column type of source tables")
        fields[str(header.get(f"TTYPE{i}", ""))] = (_TFORM_TYPES[tform], offset)
        offset += np.dtype(_TFORM_TYPES[tform]).itemsize
    width, nrows = header.get("NAXIS1"), header.get("NAXIS2")
    if width != offset or not isinstance(nrows, int) or not 0 <= data_start + offset * nrows <= len(raw):
        raise ValueError(f"{path}: NAXIS1, NAXIS2 and the columns of HDU 1 disagree with the file")
    missing = [name for name in names if name not in fields]
    if missing:
        raise ValueError(f"{path}: columns {', '.join(missing)} missing")
    dtype = np.dtype({"names": list(names), "formats": [fields[name][0] for name in names],
                      "offsets": [fields[name][1] for name in names], "itemsize": offset})
    rows = np.frombuffer(raw, dtype=dtype, count=nrows, offset=data_start)
    columns = {}
    for name in names:
        values = rows[name]
        native = values.dtype.newbyteorder("=")
        columns[name] = values == ord("T") if values.dtype == np.uint8 else values.astype(native)
    return columns
