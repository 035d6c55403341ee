"""The plain-text report of a comparison (`compare-results`' output): one table per S/N bin with the frames
as rows, then the pooled medians and scatters, agreement rates and NaN-pattern counts."""

from __future__ import annotations

from collections.abc import Mapping

from processccd.comparison import (
    AGREEMENT_COLUMNS,
    ALL_SCOPE,
    BIN_TITLES,
    RATIO_QUANTITIES,
    SNR_BINS,
    CompareReport,
    is_nan,
)
from processccd.source_list import FLOAT_COLUMNS

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
    if is_nan(value):
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


def format_report(report: CompareReport) -> str:
    """The report as text, at most 160 characters wide."""
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

