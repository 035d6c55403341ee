"""Comparison of two detected-sources lists: one-to-one sky matching per frame and the figures.

Sources are matched one-to-one by sky position (default 1") within each frame (frame = id >> 26),
closest pairs first. Figures are computed for every *scope* (``"all"``: all frames pooled, or a frame
label such as ``"4192 u"``) and every S/N *bin* (``all``, ``snr10``: S/N > 10, ``snr50``: S/N > 50;
S/N = flux.psf / flux.psf.err of the expected source, of our source for purity). A figure's name ends
with its bin, e.g. ``completeness_snr10``:

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

The text report is `processccd.text_report`, the acceptance gate `processccd.gate`. scipy is imported
by `match_sky` only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from processccd.dataid import FILTERS
from processccd.errors import InputError
from processccd.sky import unit_vectors
from processccd.source_list import FLOAT_COLUMNS, ID_FRAME_SHIFT, Rows, columns_of
from processccd.stats import robust_scatter

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


def is_nan(value: float) -> bool:
    """Whether `value` is a float NaN (figures are ints or floats)."""
    return isinstance(value, float) and math.isnan(value)


def _median(values: np.ndarray) -> float:
    return float(np.median(values)) if values.size else math.nan


def match_sky(
    ra1: np.ndarray, dec1: np.ndarray, ra2: np.ndarray, dec2: np.ndarray, radius_arcsec: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matches within `radius_arcsec`, closest pairs first: (index1, index2, separation″)."""
    from scipy.spatial import cKDTree

    empty = np.zeros(0, dtype=np.int64)
    if len(ra1) == 0 or len(ra2) == 0:
        return empty, empty, np.zeros(0)
    chord = 2.0 * math.sin(math.radians(radius_arcsec / 3600.0) / 2.0)
    pairs = cKDTree(unit_vectors(ra1, dec1)).sparse_distance_matrix(
        cKDTree(unit_vectors(ra2, dec2)), chord, output_type="ndarray"
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
                scope: {name: None if is_nan(v) else v for name, v in figs.items()}
                for scope, figs in self.figures.items()
            },
        }


def _as_columns(table: Rows) -> dict[str, np.ndarray]:
    """The 40 columns as numpy arrays."""
    return {name: np.asarray(values) for name, values in columns_of(table).items()}


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

