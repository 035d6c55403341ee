"""The 40-column `detected-sources.txt` list of the 2013 demo: its columns, writing and reading.

Printing reproduces the 2013 export script: doubles as Python-2 ``str`` ('%.12g', '.0' appended to
integral values), float32 covariance columns as numpy-1.7 ``str(float32)`` ('%.6g', same '.0' rule),
booleans ``True``/``False``, ids as integers.

astropy is imported by `read_list` only, so that `export-results` (which only writes lists) starts fast.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, TypeAlias

import numpy as np

from processccd.errors import InputError

if TYPE_CHECKING:
    from astropy.table import Table

COLUMNS: tuple[str, ...] = (
    "id", "coord.ra", "coord.dec",
    "flags.negative", "flags.badcentroid", "flags.pixel.edge",
    "flags.pixel.interpolated.any", "flags.pixel.interpolated.center",
    "flags.pixel.saturated.any", "flags.pixel.saturated.center",
    "centroid.sdss.x", "centroid.sdss.y", "centroid.sdss.err.xx", "centroid.sdss.err.yy",
    "centroid.gaussian.x", "centroid.gaussian.y", "centroid.gaussian.err.xx", "centroid.gaussian.err.yy",
    "shape.sdss.ixx", "shape.sdss.ixy", "shape.sdss.iyy",
    "shape.sdss.err.ixx", "shape.sdss.err.ixy", "shape.sdss.err.iyy", "shape.sdss.flags",
    "flux.gaussian", "flux.gaussian.err", "flux.psf", "flux.psf.err", "flux.sinc", "flux.sinc.err",
    "multishapelet.exp.flux", "multishapelet.exp.flux.err",
    "multishapelet.dev.flux", "multishapelet.dev.flux.err",
    "multishapelet.combo.flux", "multishapelet.combo.flux.err",
    "classification.extendedness", "aperturecorrection", "aperturecorrection.err",
)

Kind = Literal["id", "bool", "double", "float32"]
Rows: TypeAlias = "Table | np.ndarray | Mapping[str, Any]"
"""A list as an astropy Table, a numpy structured array or a mapping column name → values."""

BOOL_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS if c.startswith("flags.") or c == "shape.sdss.flags")
FLOAT32_COLUMNS: tuple[str, ...] = tuple(
    c for c in COLUMNS if c.startswith(("centroid.sdss.err.", "shape.sdss.err."))
)
FLOAT_COLUMNS: tuple[str, ...] = tuple(c for c in COLUMNS if c != "id" and c not in BOOL_COLUMNS)

HEADER = "#" + " ".join(COLUMNS)
# one line of the list ('%s' prints True/False); the '.0' that Python 2 appended to integral-looking floats
# is added afterwards to every integer field but the first (the id)
ROW_FORMAT = " ".join(
    "%d" if name == "id" else "%s" if name in BOOL_COLUMNS else "%.6g" if name in FLOAT32_COLUMNS else "%.12g"
    for name in COLUMNS
) + "\n"
_INTEGRAL_FIELD = re.compile(r" (-?[0-9]+)(?=[ \n])")

ID_FRAME_SHIFT = 26
"""A source id's exposure id (the frame) is id >> ID_FRAME_SHIFT."""


def column_kind(name: str) -> Kind:
    """How column `name` is stored and printed."""
    if name == "id":
        return "id"
    if name in BOOL_COLUMNS:
        return "bool"
    if name in FLOAT32_COLUMNS:
        return "float32"
    if name in COLUMNS:
        return "double"
    raise KeyError(f"unknown column {name!r}")


def _column_values(values: Sequence[Any] | np.ndarray, kind: Kind) -> list[Any]:
    """The values of one column as the Python objects `ROW_FORMAT` prints (float32 columns rounded)."""
    if kind == "double":
        return np.asarray(values, dtype=np.float64).tolist()
    if kind == "float32":
        return np.asarray(values, dtype=np.float64).astype(np.float32).astype(np.float64).tolist()
    if kind == "bool":
        return np.asarray(values, dtype=bool).tolist()
    return [int(v) for v in np.asarray(values).tolist()]


def _is_table(rows: Any) -> bool:
    """Whether `rows` is an astropy Table (there is none unless astropy.table was imported)."""
    table_module = sys.modules.get("astropy.table")
    return table_module is not None and isinstance(rows, table_module.Table)


def columns_of(rows: Any) -> dict[str, Sequence[Any] | np.ndarray]:
    """The 40 columns of a Table, structured array, mapping of arrays, or iterable of row mappings."""
    if _is_table(rows) or (isinstance(rows, np.ndarray) and rows.dtype.names):
        names = rows.colnames if _is_table(rows) else rows.dtype.names
        missing = [c for c in COLUMNS if c not in names]
        if missing:
            raise ValueError(f"rows lack columns {missing}")
        return {c: np.asarray(rows[c]) for c in COLUMNS}
    if isinstance(rows, Mapping):
        missing = [c for c in COLUMNS if c not in rows]
        if missing:
            raise ValueError(f"rows lack columns {missing}")
        return {c: np.asarray(rows[c]) for c in COLUMNS}
    row_list = list(rows)
    columns: dict[str, Sequence[Any] | np.ndarray] = {}
    for name in COLUMNS:
        try:
            columns[name] = [row[name] for row in row_list]
        except KeyError as err:
            raise ValueError(f"a row lacks column {name!r}") from err
    return columns


def write_list(rows: Rows | Iterable[Mapping[str, Any]], stream: IO[str]) -> None:
    """Write the header line and one line per source (columns in `COLUMNS` order)."""
    columns = columns_of(rows)
    values = [_column_values(columns[name], column_kind(name)) for name in COLUMNS]
    body = "".join([ROW_FORMAT % fields for fields in zip(*values, strict=True)])
    stream.write(HEADER + "\n")
    stream.write(_INTEGRAL_FIELD.sub(r" \1.0", body))


def read_list(path: str | Path) -> Table:
    """Read a detected-sources list: ids int64, flags bool, float32 error columns, other columns float64."""
    from astropy.table import Table

    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read ({err})") from err
    if not lines or lines[0].lstrip("#").split() != list(COLUMNS) or not lines[0].startswith("#"):
        raise InputError(f"{path}: the first line is not the 40-column header '#id coord.ra ...'")
    body = [line.split() for line in lines[1:] if line.strip()]
    for number, fields in enumerate(body, start=2):
        if len(fields) != len(COLUMNS):
            raise InputError(f"{path}: line {number} has {len(fields)} fields, expected {len(COLUMNS)}")
    text = np.array(body, dtype=str).reshape(len(body), len(COLUMNS))
    table = Table()
    for index, name in enumerate(COLUMNS):
        kind = column_kind(name)
        cells = text[:, index]
        try:
            if kind == "bool":
                bad = ~np.isin(cells, ("True", "False"))
                if bad.any():
                    raise ValueError(f"not True/False: {cells[bad][0]!r}")
                table[name] = cells == "True"
            elif kind == "id":
                table[name] = cells.astype(np.int64)
            else:
                table[name] = cells.astype(np.float32 if kind == "float32" else np.float64)
        except (ValueError, OverflowError) as err:
            raise InputError(f"{path}: column {name}: {err}") from err
    return table

