"""The 2020 schema of the exported list: LSST meas_base column names (`export-results --schema 2020`).

Each column of the src tables that has a meas_base counterpart is written under its meas_base name
(base_SdssCentroid_x, base_PsfFlux_instFlux, base_CircularApertureFlux_6_0_instFlux, ...), with meas_base's
conventions: errors are standard deviations (the src tables keep the variances of the centroid and
shape), `parent` and `deblend_nChild` as in the deblended catalogues. Columns meas_base never had keep
a descriptive name of the same style (multishapelet_*, base_CircularApertureFlux_*_flag_badPixel).
The profile's columns (circular apertures, Kron, deblending) are written when the src tables have them.

`read_list_any` reads a list of either schema as the 40 columns of the 2013 list (plus `parent` and
`deblend.nchild` when present), so that compare-results compares both with the expected 2013 list.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from processccd.errors import InputError

if TYPE_CHECKING:
    from astropy.table import Table

# src column -> (meas_base name, conversion: "" as is, "sqrt": variance -> standard deviation)
BASE_COLUMNS: dict[str, tuple[str, str]] = {
    "id": ("id", ""),
    "parent": ("parent", ""),
    "deblend.nchild": ("deblend_nChild", ""),
    "coord.ra": ("coord_ra", ""),
    "coord.dec": ("coord_dec", ""),
    "flags.negative": ("flags_negative", ""),
    "centroid.sdss.x": ("base_SdssCentroid_x", ""),
    "centroid.sdss.y": ("base_SdssCentroid_y", ""),
    "centroid.sdss.err.xx": ("base_SdssCentroid_xErr", "sqrt"),
    "centroid.sdss.err.yy": ("base_SdssCentroid_yErr", "sqrt"),
    "flags.badcentroid": ("base_SdssCentroid_flag", ""),
    "centroid.gaussian.x": ("base_GaussianCentroid_x", ""),
    "centroid.gaussian.y": ("base_GaussianCentroid_y", ""),
    "centroid.gaussian.err.xx": ("base_GaussianCentroid_xErr", "sqrt"),
    "centroid.gaussian.err.yy": ("base_GaussianCentroid_yErr", "sqrt"),
    "flags.pixel.edge": ("base_PixelFlags_flag_edge", ""),
    "flags.pixel.interpolated.any": ("base_PixelFlags_flag_interpolated", ""),
    "flags.pixel.interpolated.center": ("base_PixelFlags_flag_interpolatedCenter", ""),
    "flags.pixel.saturated.any": ("base_PixelFlags_flag_saturated", ""),
    "flags.pixel.saturated.center": ("base_PixelFlags_flag_saturatedCenter", ""),
    "shape.sdss.ixx": ("base_SdssShape_xx", ""),
    "shape.sdss.iyy": ("base_SdssShape_yy", ""),
    "shape.sdss.ixy": ("base_SdssShape_xy", ""),
    "shape.sdss.err.ixx": ("base_SdssShape_xxErr", "sqrt"),
    "shape.sdss.err.iyy": ("base_SdssShape_yyErr", "sqrt"),
    "shape.sdss.err.ixy": ("base_SdssShape_xyErr", "sqrt"),
    "shape.sdss.flags": ("base_SdssShape_flag", ""),
    "flux.psf": ("base_PsfFlux_instFlux", ""),
    "flux.psf.err": ("base_PsfFlux_instFluxErr", ""),
    "aperturecorrection": ("base_PsfFlux_apCorr", ""),
    "aperturecorrection.err": ("base_PsfFlux_apCorrErr", ""),
    "flux.gaussian": ("base_GaussianFlux_instFlux", ""),
    "flux.gaussian.err": ("base_GaussianFlux_instFluxErr", ""),
    "flux.sinc": ("base_SincFlux_instFlux", ""),
    "flux.sinc.err": ("base_SincFlux_instFluxErr", ""),
    "multishapelet.exp.flux": ("multishapelet_exp_instFlux", ""),
    "multishapelet.exp.flux.err": ("multishapelet_exp_instFluxErr", ""),
    "multishapelet.dev.flux": ("multishapelet_dev_instFlux", ""),
    "multishapelet.dev.flux.err": ("multishapelet_dev_instFluxErr", ""),
    "multishapelet.combo.flux": ("multishapelet_combo_instFlux", ""),
    "multishapelet.combo.flux.err": ("multishapelet_combo_instFluxErr", ""),
    "classification.extendedness": ("base_ClassificationExtendedness_value", ""),
    "flux.kron": ("ext_photometryKron_KronFlux_instFlux", ""),
    "flux.kron.err": ("ext_photometryKron_KronFlux_instFluxErr", ""),
    "flux.kron.radius": ("ext_photometryKron_KronFlux_radius", ""),
    "flux.kron.flags": ("ext_photometryKron_KronFlux_flag", ""),
}
_CIRCULAR = re.compile(r"^flux\.circular\.([0-9]+_[0-9])(\.err|\.flags\.offimage|\.flags\.masked)?$")
_CIRCULAR_SUFFIX = {None: "instFlux", ".err": "instFluxErr", ".flags.offimage": "flag_apertureTruncated",
                    ".flags.masked": "flag_badPixel"}
_BASE_CIRCULAR = re.compile(r"^base_CircularApertureFlux_([0-9]+_[0-9])_(instFlux|instFluxErr|flag_apertureTruncated"
                            r"|flag_badPixel)$")


def base_name(column: str) -> tuple[str, str] | None:
    """(meas_base name, conversion) of a src column, or None if it is not exported."""
    if column in BASE_COLUMNS:
        return BASE_COLUMNS[column]
    match = _CIRCULAR.match(column)
    if match:
        return f"base_CircularApertureFlux_{match.group(1)}_{_CIRCULAR_SUFFIX[match.group(2)]}", ""
    return None


def src_name(name: str) -> tuple[str, str] | None:
    """The src column (and conversion to undo) of a meas_base name, or None."""
    for column, (base, conversion) in BASE_COLUMNS.items():
        if base == name:
            return column, conversion
    match = _BASE_CIRCULAR.match(name)
    if match:
        suffix = {v: k for k, v in _CIRCULAR_SUFFIX.items()}[match.group(2)]
        return f"flux.circular.{match.group(1)}{suffix or ''}", ""
    return None


def exported_columns(available: tuple[str, ...]) -> list[str]:
    """The src columns of `available` the 2020 list holds, in schema order (circular apertures by radius)."""
    fixed = [c for c in BASE_COLUMNS if c in available]
    circular = sorted((c for c in available if _CIRCULAR.match(c)),
                      key=lambda c: (float(_CIRCULAR.match(c).group(1).replace("_", ".")), c))
    return fixed + circular


def _kind(values: np.ndarray) -> str:
    if values.dtype == bool:
        return "bool"
    return "int" if np.issubdtype(values.dtype, np.integer) else "float"


def write_list_2020(columns: Mapping[str, np.ndarray], stream: IO[str]) -> None:
    """Header '#name name ...' with the meas_base names, then one line per source: floats '%.12g', logicals
    True/False, integers as integers."""
    names = exported_columns(tuple(columns))
    values = []
    for column in names:
        data = np.asarray(columns[column])
        if base_name(column)[1] == "sqrt":
            with np.errstate(invalid="ignore"):
                data = np.sqrt(data.astype(np.float64))
        values.append((_kind(data), data))
    formats = " ".join("%s" if kind == "bool" else "%d" if kind == "int" else "%.12g" for kind, _ in values) + "\n"
    stream.write("#" + " ".join(base_name(c)[0] for c in names) + "\n")
    rows = zip(*[data.tolist() for _, data in values], strict=True)
    stream.write("".join(formats % row for row in rows))


def is_2020_header(line: str) -> bool:
    """Whether the first line of a list is a 2020-schema header."""
    return line.startswith("#") and "base_SdssCentroid_x" in line.lstrip("#").split()


def read_list_any(path: str | Path) -> Table:
    """A list of either schema as the 2013 list's 40 columns (plus parent, deblend.nchild when present); 2020
    columns the 2013 list lacks are dropped, 2013 columns the 2020 list lacks are NaN / False."""
    from astropy.table import Table

    from processccd.source_list import BOOL_COLUMNS, COLUMNS, FLOAT32_COLUMNS, read_list

    path = Path(path)
    try:
        with open(path) as stream:
            first = stream.readline()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: cannot read ({err})") from err
    if not is_2020_header(first):
        return read_list(path)
    names = first.lstrip("#").split()
    lines = [line.split() for line in path.read_text().splitlines()[1:] if line.strip()]
    for number, fields in enumerate(lines, start=2):
        if len(fields) != len(names):
            raise InputError(f"{path}: line {number} has {len(fields)} fields, expected {len(names)}")
    text = np.array(lines, dtype=str).reshape(len(lines), len(names))
    found: dict[str, np.ndarray] = {}
    for index, name in enumerate(names):
        mapped = src_name(name)
        if mapped is None:
            continue
        column, conversion = mapped
        cells = text[:, index]
        try:
            if column in BOOL_COLUMNS or column.endswith(".flags") or ".flags." in column:
                values: Any = cells == "True"
            elif column in ("id", "parent", "deblend.nchild"):
                values = cells.astype(np.int64)
            else:
                values = cells.astype(np.float64)
                if conversion == "sqrt":
                    values = values**2
        except ValueError as err:
            raise InputError(f"{path}: column {name}: {err}") from err
        found[column] = values
    if "id" not in found:
        raise InputError(f"{path}: a 2020-schema list without an id column")
    table = Table()
    for column in COLUMNS:
        if column in found:
            values = found[column]
        else:
            values = np.zeros(len(lines), bool) if column in BOOL_COLUMNS else np.full(len(lines), np.nan)
        table[column] = values.astype(np.float32) if column in FLOAT32_COLUMNS else values
    for column in ("parent", "deblend.nchild"):
        if column in found:
            table[column] = found[column]
    return table
