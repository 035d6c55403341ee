"""The 40-column `detected-sources.txt` list: writing, reading, and comparison with an expected list.

Printing reproduces the 2013 export script: doubles as Python-2 ``str`` ('%.12g', '.0' appended to
integral values), float32 covariance columns as numpy-1.7 ``str(float32)`` ('%.6g', same '.0' rule),
booleans ``True``/``False``, ids as integers.

Comparison (`compare_lists`): sources are matched one-to-one by sky position (default 1") within each
frame (frame = id >> 26), closest pairs first. Figures are computed for every *scope* (``"all"``: all
frames pooled, or a frame label such as ``"4192 u"``) and every S/N *bin* (``all``, ``snr10``: S/N > 10,
``snr50``: S/N > 50; S/N = flux.psf / flux.psf.err of the expected source, of our source for purity).
A figure's name ends with its bin, e.g. ``completeness_snr10``:

- ``n_expected_B``, ``n_ours_B``, ``n_matched_B``: counts; ``completeness_B`` = matched expected /
  expected, ``purity_B`` = matched ours / ours (both binned by their own S/N).
- ``Q_ratio_median_B``, ``Q_ratio_scatter_B`` (1.4826 MAD), ``Q_ratio_n_B`` of ours / expected for Q in
  psf, psf_raw (flux.psf / aperturecorrection), sinc, gaussian, exp, dev, combo, apcorr, ixx, iyy;
  pairs with a NaN (or a non-finite ratio) are left out.
- ``ixy_diff_median_B``, ``ixy_diff_scatter_B``: ours − expected shape.sdss.ixy.
- ``centroid_offset_median_B`` / ``_scatter_B`` (radial centroid.sdss offset, px), ``centroid_dx_*``,
  ``centroid_dy_*`` (median and scatter of the signed offsets), ``separation_median_B`` (arcsec).
- ``agree_F_B``: fraction of matched pairs whose flag F agrees (F = negative, badcentroid, edge,
  interpolated_any, interpolated_center, saturated_any, saturated_center, shape_flags, extendedness).
- ``id_equal_B``: fraction of matched pairs with identical ids.
- ``nan_mismatch_C_B``: number of matched pairs where exactly one side is NaN, C = float column name
  with '.' replaced by '_' (e.g. ``nan_mismatch_flux_gaussian_err_all``).

Gate file (YAML mapping, `load_gate` / `check_gate`). Each key is a figure name plus a bound suffix,
optionally followed by ``_per_frame``; each value is a number or a two-number list:

- ``<figure>_min: v``  → figure ≥ v;  ``<figure>_max: v`` → figure ≤ v;
- ``<figure>: [lo, hi]`` → lo ≤ figure ≤ hi;
- without ``_per_frame`` the bound applies to the pooled scope ``all``; with it, to every frame.

Example::

    completeness_snr10_min_per_frame: 0.99
    psf_raw_ratio_median_snr50: [0.998, 1.002]
    centroid_offset_median_snr50_max: 0.01

A NaN figure (e.g. an empty bin) fails its bound. Unknown figure names are an error.

astropy, scipy and yaml are imported by the functions that use them, so that `export-results` (which
only writes lists) starts fast.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
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
# one line of the list: the formats of `format_value` ('%s' prints True/False); the '.0' that Python 2
# appended to integral-looking floats is added afterwards to every integer field but the first (the id)
ROW_FORMAT = " ".join(
    "%d" if name == "id" else "%s" if name in BOOL_COLUMNS else "%.6g" if name in FLOAT32_COLUMNS else "%.12g"
    for name in COLUMNS
) + "\n"
_INTEGRAL_FIELD = re.compile(r" (-?[0-9]+)(?=[ \n])")

FILTERS = "ugriz"
ID_FRAME_SHIFT = 26


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


def _add_dot_zero(text: str) -> str:
    """Append '.0' to an integral-looking number, as Python 2 and numpy 1.7 `str` did."""
    return text + ".0" if text.lstrip("-").isdigit() else text


def format_value(value: Any, kind: Kind) -> str:
    """One value printed the way the 2013 export script printed it."""
    if kind == "double":
        return _add_dot_zero(f"{float(value):.12g}")
    if kind == "float32":
        return _add_dot_zero(f"{float(np.float32(value)):.6g}")
    if kind == "bool":
        return "True" if value else "False"
    if kind == "id":
        return str(int(value))
    raise ValueError(f"unknown column kind {kind!r}")


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


def _columns_of(rows: Any) -> dict[str, Sequence[Any] | np.ndarray]:
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
    columns = _columns_of(rows)
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


# ---------------------------------------------------------------------------------------------- comparison

SNR_BINS: dict[str, float] = {"all": -math.inf, "snr10": 10.0, "snr50": 50.0}
BIN_TITLES = {"all": "all S/N", "snr10": "S/N > 10", "snr50": "S/N > 50"}

RATIO_QUANTITIES: dict[str, str] = {
    "psf": "flux.psf",
    "psf_raw": "flux.psf/aperturecorrection",
    "sinc": "flux.sinc",
    "gaussian": "flux.gaussian",
    "exp": "multishapelet.exp.flux",
    "dev": "multishapelet.dev.flux",
    "combo": "multishapelet.combo.flux",
    "apcorr": "aperturecorrection",
    "ixx": "shape.sdss.ixx",
    "iyy": "shape.sdss.iyy",
}

AGREEMENT_COLUMNS: dict[str, str] = {
    "negative": "flags.negative",
    "badcentroid": "flags.badcentroid",
    "edge": "flags.pixel.edge",
    "interpolated_any": "flags.pixel.interpolated.any",
    "interpolated_center": "flags.pixel.interpolated.center",
    "saturated_any": "flags.pixel.saturated.any",
    "saturated_center": "flags.pixel.saturated.center",
    "shape_flags": "shape.sdss.flags",
    "extendedness": "classification.extendedness",
}

ALL_SCOPE = "all"
ROBUST_SIGMA = 1.4826


def frame_label(exp_id: int) -> str:
    """'4192 u' for an exposure id ((run·10+filter)·10+camcol)·10000+field."""
    run, filter_index = exp_id // 1_000_000, (exp_id // 100_000) % 10
    filter_name = FILTERS[filter_index] if filter_index < len(FILTERS) else str(filter_index)
    return f"{run} {filter_name}"


def _frame_sort_key(exp_id: int) -> tuple[int, int, int]:
    """Frames ordered by filter, then run, then camcol/field."""
    return ((exp_id // 100_000) % 10, exp_id // 1_000_000, exp_id % 100_000)


def _frame_labels(exp_ids: Sequence[int]) -> dict[int, str]:
    """Labels 'run filter', lengthened by 'camcol field' when two frames would share one."""
    short = {e: frame_label(e) for e in exp_ids}
    counts: dict[str, int] = {}
    for label in short.values():
        counts[label] = counts.get(label, 0) + 1
    return {
        e: label if counts[label] == 1 else f"{label} {(e // 10_000) % 10} {e % 10_000}"
        for e, label in short.items()
    }


def _is_nan(value: float) -> bool:
    return isinstance(value, float) and math.isnan(value)


def robust_scatter(values: np.ndarray) -> float:
    """1.4826 × median absolute deviation (NaN when empty)."""
    if values.size == 0:
        return math.nan
    return float(ROBUST_SIGMA * np.median(np.abs(values - np.median(values))))


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if values.size else math.nan


def _unit_vectors(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    return np.column_stack((np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)))


def match_sky(
    ra1: np.ndarray, dec1: np.ndarray, ra2: np.ndarray, dec2: np.ndarray, radius_arcsec: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matches within `radius_arcsec`, closest pairs first: (index1, index2, separation″)."""
    from scipy.spatial import cKDTree

    empty = np.zeros(0, dtype=np.int64)
    if len(ra1) == 0 or len(ra2) == 0:
        return empty, empty, np.zeros(0)
    chord = 2.0 * math.sin(math.radians(radius_arcsec / 3600.0) / 2.0)
    pairs = cKDTree(_unit_vectors(ra1, dec1)).sparse_distance_matrix(
        cKDTree(_unit_vectors(ra2, dec2)), chord, output_type="ndarray"
    )
    order = np.lexsort((pairs["j"], pairs["i"], pairs["v"]))
    used1 = np.zeros(len(ra1), dtype=bool)
    used2 = np.zeros(len(ra2), dtype=bool)
    kept: list[int] = []
    for k, i, j in zip(order.tolist(), pairs["i"][order].tolist(), pairs["j"][order].tolist(), strict=True):
        if not used1[i] and not used2[j]:
            used1[i] = used2[j] = True
            kept.append(k)
    chosen = pairs[np.array(kept, dtype=np.int64)]
    separation = np.degrees(2.0 * np.arcsin(np.clip(chosen["v"] / 2.0, 0.0, 1.0))) * 3600.0
    return chosen["i"].astype(np.int64), chosen["j"].astype(np.int64), separation


@dataclass
class CompareReport:
    """Figures of one comparison: scope ('all' or a frame label) → figure name → value."""

    match_radius_arcsec: float
    frames: list[str]
    figures: dict[str, dict[str, float]] = field(default_factory=dict)

    def figure(self, name: str, scope: str = ALL_SCOPE) -> float:
        """One figure of one scope."""
        return self.figures[scope][name]

    def to_json_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (NaN → null)."""
        return {
            "match_radius_arcsec": self.match_radius_arcsec,
            "snr_bins": {name: BIN_TITLES[name] for name in SNR_BINS},
            "frames": self.frames,
            "figures": {
                scope: {name: None if _is_nan(v) else v for name, v in figs.items()}
                for scope, figs in self.figures.items()
            },
        }

    def format_text(self) -> str:
        """A plain-text report: one table per S/N bin (frames as rows), then per-column details."""
        return _format_report(self)


def _as_columns(table: Rows) -> dict[str, np.ndarray]:
    """The 40 columns as numpy arrays."""
    return {name: np.asarray(values) for name, values in _columns_of(table).items()}


def _snr(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return columns["flux.psf"].astype(np.float64) / columns["flux.psf.err"].astype(np.float64)


def _ratio_values(ours: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray], quantity: str,
                  i_ours: np.ndarray, i_exp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(our values, expected values) of one ratio quantity over matched pairs."""
    def values(columns: Mapping[str, np.ndarray], index: np.ndarray) -> np.ndarray:
        if quantity == "psf_raw":
            return columns["flux.psf"][index] / columns["aperturecorrection"][index]
        return columns[RATIO_QUANTITIES[quantity]][index].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return values(ours, i_ours), values(expected, i_exp)


def _pair_figures(ours: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray],
                  i_ours: np.ndarray, i_exp: np.ndarray, suffix: str) -> dict[str, float]:
    """Every figure computed from matched pairs (ratios, offsets, agreements, NaN patterns)."""
    figures: dict[str, float] = {}
    n_pairs = len(i_ours)
    for quantity in RATIO_QUANTITIES:
        ours_values, exp_values = _ratio_values(ours, expected, quantity, i_ours, i_exp)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = ours_values / exp_values
        ratio = ratio[np.isfinite(ratio)]
        figures[f"{quantity}_ratio_median_{suffix}"] = _median(ratio)
        figures[f"{quantity}_ratio_scatter_{suffix}"] = robust_scatter(ratio)
        figures[f"{quantity}_ratio_n_{suffix}"] = int(ratio.size)
    ixy_diff = ours["shape.sdss.ixy"][i_ours] - expected["shape.sdss.ixy"][i_exp]
    ixy_diff = ixy_diff[np.isfinite(ixy_diff)]
    figures[f"ixy_diff_median_{suffix}"] = _median(ixy_diff)
    figures[f"ixy_diff_scatter_{suffix}"] = robust_scatter(ixy_diff)
    dx = ours["centroid.sdss.x"][i_ours] - expected["centroid.sdss.x"][i_exp]
    dy = ours["centroid.sdss.y"][i_ours] - expected["centroid.sdss.y"][i_exp]
    finite = np.isfinite(dx) & np.isfinite(dy)
    dx, dy = dx[finite], dy[finite]
    offset = np.hypot(dx, dy)
    figures[f"centroid_offset_median_{suffix}"] = _median(offset)
    figures[f"centroid_offset_scatter_{suffix}"] = robust_scatter(offset)
    figures[f"centroid_dx_median_{suffix}"] = _median(dx)
    figures[f"centroid_dx_scatter_{suffix}"] = robust_scatter(dx)
    figures[f"centroid_dy_median_{suffix}"] = _median(dy)
    figures[f"centroid_dy_scatter_{suffix}"] = robust_scatter(dy)
    for alias, column in AGREEMENT_COLUMNS.items():
        a, b = ours[column][i_ours], expected[column][i_exp]
        same = (a == b) | (np.isnan(a) & np.isnan(b)) if a.dtype.kind == "f" else a == b
        figures[f"agree_{alias}_{suffix}"] = float(same.mean()) if n_pairs else math.nan
    figures[f"id_equal_{suffix}"] = (
        float((ours["id"][i_ours] == expected["id"][i_exp]).mean()) if n_pairs else math.nan
    )
    for column in FLOAT_COLUMNS:
        mismatch = np.isnan(ours[column][i_ours]) != np.isnan(expected[column][i_exp])
        figures[f"nan_mismatch_{column.replace('.', '_')}_{suffix}"] = int(mismatch.sum())
    return figures


def _scope_figures(ours: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray],
                   ours_rows: np.ndarray, exp_rows: np.ndarray, i_ours: np.ndarray, i_exp: np.ndarray,
                   separation: np.ndarray, snr_ours: np.ndarray, snr_exp: np.ndarray) -> dict[str, float]:
    """All figures of one scope: its rows of each list and its matched pairs."""
    figures: dict[str, float] = {}
    for suffix, threshold in SNR_BINS.items():
        exp_in = exp_rows[snr_exp[exp_rows] > threshold] if suffix != "all" else exp_rows
        ours_in = ours_rows[snr_ours[ours_rows] > threshold] if suffix != "all" else ours_rows
        pair_in = snr_exp[i_exp] > threshold if suffix != "all" else np.ones(len(i_exp), dtype=bool)
        ours_matched_in = (snr_ours[i_ours] > threshold).sum() if suffix != "all" else len(i_ours)
        figures[f"n_expected_{suffix}"] = int(exp_in.size)
        figures[f"n_ours_{suffix}"] = int(ours_in.size)
        figures[f"n_matched_{suffix}"] = int(pair_in.sum())
        figures[f"completeness_{suffix}"] = pair_in.sum() / exp_in.size if exp_in.size else math.nan
        figures[f"purity_{suffix}"] = float(ours_matched_in / ours_in.size) if ours_in.size else math.nan
        figures[f"separation_median_{suffix}"] = _median(separation[pair_in])
        figures.update(_pair_figures(ours, expected, i_ours[pair_in], i_exp[pair_in], suffix))
    return {name: float(v) if isinstance(v, np.floating) else v for name, v in figures.items()}


def compare_lists(ours: Rows, expected: Rows, match_radius_arcsec: float = 1.0,
                  frames: Sequence[str] | None = None) -> CompareReport:
    """Match `ours` to `expected` per frame by sky position and compute every figure (module docstring).

    `frames` restricts the comparison to those frame labels ('4192 u'); an unknown label is an InputError.
    """
    ours_columns = _as_columns(ours)
    exp_columns = _as_columns(expected)
    ours_frame = ours_columns["id"].astype(np.int64) >> ID_FRAME_SHIFT
    exp_frame = exp_columns["id"].astype(np.int64) >> ID_FRAME_SHIFT
    exp_ids = sorted({int(e) for e in np.unique(ours_frame)} | {int(e) for e in np.unique(exp_frame)},
                     key=_frame_sort_key)
    labels = _frame_labels(exp_ids)
    if frames:
        known = {label: e for e, label in labels.items()}
        unknown = [f for f in frames if f not in known]
        if unknown:
            raise InputError(f"--frame {unknown[0]!r}: no such frame in either list (known: {sorted(known)})")
        exp_ids = [e for e in exp_ids if labels[e] in set(frames)]
    snr_ours, snr_exp = _snr(ours_columns), _snr(exp_columns)

    report = CompareReport(match_radius_arcsec=match_radius_arcsec, frames=[labels[e] for e in exp_ids])
    pooled_keys = ("ours_rows", "exp_rows", "i_ours", "i_exp", "sep")
    pooled: dict[str, list[np.ndarray]] = {key: [] for key in pooled_keys}
    for exp_id in exp_ids:
        ours_rows = np.flatnonzero(ours_frame == exp_id)
        exp_rows = np.flatnonzero(exp_frame == exp_id)
        i1, i2, separation = match_sky(
            ours_columns["coord.ra"][ours_rows], ours_columns["coord.dec"][ours_rows],
            exp_columns["coord.ra"][exp_rows], exp_columns["coord.dec"][exp_rows], match_radius_arcsec,
        )
        i_ours, i_exp = ours_rows[i1], exp_rows[i2]
        report.figures[labels[exp_id]] = _scope_figures(
            ours_columns, exp_columns, ours_rows, exp_rows, i_ours, i_exp, separation, snr_ours, snr_exp
        )
        for key, value in zip(pooled, (ours_rows, exp_rows, i_ours, i_exp, separation), strict=True):
            pooled[key].append(value)
    merged = {key: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
              for key, parts in pooled.items()}
    report.figures[ALL_SCOPE] = _scope_figures(
        ours_columns, exp_columns, merged["ours_rows"], merged["exp_rows"], merged["i_ours"], merged["i_exp"],
        merged["sep"], snr_ours, snr_exp,
    )
    return report


# ---------------------------------------------------------------------------------------------- text report

# (header, figure base, width, format spec); the figure name is base + "_" + bin
_TABLE_COLUMNS: tuple[tuple[str, str, int, str], ...] = (
    ("n_exp", "n_expected", 6, "d"),
    ("n_ours", "n_ours", 6, "d"),
    ("compl", "completeness", 6, ".4f"),
    ("purity", "purity", 6, ".4f"),
    ("psfraw", "psf_raw_ratio_median", 7, ".5f"),
    ("±", "psf_raw_ratio_scatter", 7, ".5f"),
    ("sinc", "sinc_ratio_median", 7, ".5f"),
    ("±", "sinc_ratio_scatter", 7, ".5f"),
    ("gauss", "gaussian_ratio_median", 7, ".5f"),
    ("combo", "combo_ratio_median", 7, ".5f"),
    ("apcorr", "apcorr_ratio_median", 7, ".5f"),
    ("ixx±", "ixx_ratio_scatter", 7, ".5f"),
    ("iyy±", "iyy_ratio_scatter", 7, ".5f"),
    ("dcen", "centroid_offset_median", 7, ".4f"),
    ("ext", "agree_extendedness", 6, ".4f"),
    ("badcen", "agree_badcentroid", 6, ".4f"),
    ("shapef", "agree_shape_flags", 6, ".4f"),
    ("id=", "id_equal", 6, ".4f"),
)


def _cell(value: float, width: int, spec: str) -> str:
    """One right-aligned table cell; NaN prints as '-'."""
    if _is_nan(value):
        return "-".rjust(width)
    return format(int(value) if spec == "d" else value, f">{width}{spec}")


def _median_scatter_row(title: str, overall: Mapping[str, float], median: str, scatter: str,
                        count: str | None = None) -> str:
    """'title  median ± scatter (n)' for each S/N bin (signed medians for differences)."""
    spec = ".5f" if count is not None else "+.5f"
    cells = ""
    for suffix in SNR_BINS:
        text = f"{overall[f'{median}_{suffix}']:{spec}} ± {overall[f'{scatter}_{suffix}']:.5f}"
        if count is not None:
            text += f" ({overall[f'{count}_{suffix}']})"
        cells += text.rjust(28)
    return title.ljust(44) + cells


def _format_report(report: CompareReport) -> str:
    scopes = [*report.frames, ALL_SCOPE]
    label_width = max(len(s) for s in [*scopes, "frame"])
    lines = [f"One-to-one sky match within {report.match_radius_arcsec:g}\" per frame. Ratios ours/expected "
             "(median, ± = 1.4826 MAD); dcen = median centroid offset (px); ext..id= = agreement rates."]
    for suffix in SNR_BINS:
        lines += ["", f"== {BIN_TITLES[suffix]} (expected S/N; purity by our S/N)"]
        header = "frame".ljust(label_width)
        for title, _, width, _ in _TABLE_COLUMNS:
            header += " " + title.rjust(width)
        lines.append(header)
        for scope in scopes:
            row = scope.ljust(label_width)
            for _, base, width, spec in _TABLE_COLUMNS:
                row += " " + _cell(report.figures[scope][f"{base}_{suffix}"], width, spec)
            lines.append(row)
    overall = report.figures[ALL_SCOPE]
    lines += ["", "== all frames: median ± scatter (n)",
              "quantity".ljust(44) + "".join(BIN_TITLES[s].rjust(28) for s in SNR_BINS)]
    for quantity, title in RATIO_QUANTITIES.items():
        lines.append(_median_scatter_row(f"ratio {quantity} ({title})", overall, f"{quantity}_ratio_median",
                                         f"{quantity}_ratio_scatter", f"{quantity}_ratio_n"))
    lines.append(_median_scatter_row("ours - expected shape.sdss.ixy", overall, "ixy_diff_median",
                                     "ixy_diff_scatter"))
    for name in ("offset", "dx", "dy"):
        lines.append(_median_scatter_row(f"centroid.sdss {name} (px)", overall, f"centroid_{name}_median",
                                         f"centroid_{name}_scatter"))
    lines += ["", "== agreement rates, all frames",
              "column".ljust(44) + "".join(BIN_TITLES[s].rjust(12) for s in SNR_BINS)]
    for alias, column in [*AGREEMENT_COLUMNS.items(), ("id", "id (equal)")]:
        figure = "id_equal" if alias == "id" else f"agree_{alias}"
        lines.append(column.ljust(44) + "".join(_cell(overall[f"{figure}_{s}"], 12, ".4f") for s in SNR_BINS))
    lines += ["", "== NaN-pattern disagreements (matched pairs, all frames, all S/N)"]
    mismatches = [(c, overall[f"nan_mismatch_{c.replace('.', '_')}_all"]) for c in FLOAT_COLUMNS]
    for start in range(0, len(mismatches), 3):
        lines.append("".join(f"{c:>32} {n:6d}    " for c, n in mismatches[start:start + 3]).rstrip())
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- gate

PER_FRAME_SUFFIX = "_per_frame"


@dataclass(frozen=True)
class GateBound:
    """One gate entry: figure, lower/upper bounds (None = open), and whether it applies per frame."""

    key: str
    figure: str
    lower: float | None
    upper: float | None
    per_frame: bool

    def describe(self) -> str:
        """The bound as text: '[lo, hi]', '>= lo' or '<= hi'."""
        if self.lower is not None and self.upper is not None:
            return f"[{self.lower:g}, {self.upper:g}]"
        return f">= {self.lower:g}" if self.lower is not None else f"<= {self.upper:g}"


def _parse_gate_entry(key: str, value: Any, source: str) -> GateBound:
    name = str(key)
    per_frame = name.endswith(PER_FRAME_SUFFIX)
    if per_frame:
        name = name[: -len(PER_FRAME_SUFFIX)]

    def number(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InputError(f"{source}: {key}: {v!r} is not a number")
        return float(v)

    if isinstance(value, list):
        if len(value) != 2:
            raise InputError(f"{source}: {key}: a range is a list [lo, hi] of two numbers")
        lower, upper = number(value[0]), number(value[1])
        return GateBound(str(key), name, lower, upper, per_frame)
    if name.endswith("_min"):
        return GateBound(str(key), name[:-4], number(value), None, per_frame)
    if name.endswith("_max"):
        return GateBound(str(key), name[:-4], None, number(value), per_frame)
    raise InputError(f"{source}: {key}: a single number needs a key ending in _min or _max "
                     f"(optionally followed by {PER_FRAME_SUFFIX})")


def default_gate_path() -> Path:
    """The packaged gate holding the project's acceptance targets (configs/compare-gate.yaml)."""
    return Path(__file__).resolve().parent / "configs" / "compare-gate.yaml"


def load_gate(path: str | Path) -> list[GateBound]:
    """Read and validate a gate YAML file (schema in the module docstring)."""
    import yaml

    path = Path(path)
    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise InputError(f"{path}: cannot read the gate file ({err})") from err
    if not isinstance(content, dict) or not content:
        raise InputError(f"{path}: a gate file is a non-empty mapping 'figure_min: value'")
    return parse_gate(content, str(path))


def parse_gate(content: Mapping[str, Any], source: str = "gate") -> list[GateBound]:
    """Gate bounds from an already-loaded mapping; unknown figure names are an InputError."""
    bounds = [_parse_gate_entry(key, value, source) for key, value in content.items()]
    known = _known_figures()
    for bound in bounds:
        if bound.figure not in known:
            raise InputError(f"{source}: {bound.key}: unknown figure {bound.figure!r}")
    return bounds


def _known_figures() -> set[str]:
    """Every figure name a report holds (computed on two one-row lists)."""
    row = {name: (np.array([1 << ID_FRAME_SHIFT]) if name == "id" else np.zeros(1, dtype=bool)
                  if name in BOOL_COLUMNS else np.ones(1)) for name in COLUMNS}
    return set(compare_lists(row, row).figures[ALL_SCOPE])


def check_gate(report: CompareReport, bounds: Sequence[GateBound]) -> list[str]:
    """One line per failing figure ('<scope>: <figure> = <value> (bound)'); empty when all pass."""
    failures: list[str] = []
    for bound in bounds:
        scopes = report.frames if bound.per_frame else [ALL_SCOPE]
        for scope in scopes:
            value = report.figures[scope][bound.figure]
            if _is_nan(value) or (bound.lower is not None and value < bound.lower) or (
                bound.upper is not None and value > bound.upper
            ):
                failures.append(f"FAIL {scope}: {bound.figure} = {value:.6g} "
                                f"(required {bound.describe()}; gate key {bound.key})")
    return failures
