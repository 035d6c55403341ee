"""Quick-look QA (`process-ccd --qa`): one PNG per frame and an index.html with the run summary.

Per frame, three panels: the calexp (zscale) with the src positions marked; the photometric residuals
(ZP - 2.5 log10 flux.psf) - m_ref of the matched reference stars against m_ref (icMatch holds the reference
side of each match and the source id, icSrc the calibrated flux.psf; they are joined on the id), with the
zero point's scatter; the aperture-correction map (from the apCorr YAML polynomial, else the per-source
`aperturecorrection` column of src). A missing product leaves its panel with a note instead of a plot.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from processccd.dataid import DataId
from processccd.stats import robust_scatter

QA_DIR = "qa"
FIGURE_INCHES = (16.0, 5.0)
FIGURE_DPI = 100  # -> 1600 x 500 pixels
PNG_SHAPE = (int(FIGURE_INCHES[1] * FIGURE_DPI), int(FIGURE_INCHES[0] * FIGURE_DPI))  # (height, width)


def qa_png_path(output_root: Path, data_id: DataId) -> Path:
    """`<output>/qa/qa-RRRRRR-FC-FFFF.png`."""
    return Path(output_root) / QA_DIR / f"qa-{data_id.run:06d}-{data_id.filter}{data_id.camcol}-{data_id.field:04d}.png"


def write_frame_qa(butler: Any, data_id: DataId, path: Path) -> None:
    """Draw the three QA panels of a processed frame into `path` (written atomically)."""
    from processccd.butler import atomic_path

    figure = frame_figure(butler, data_id)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=FIGURE_DPI)


def frame_figure(butler: Any, data_id: DataId) -> Any:
    """The matplotlib Figure of a processed frame's three QA panels (axes: calexp, residuals, apCorr)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from processccd.image import read_calexp
    from processccd.table import read_source_table

    calexp = read_calexp(butler.path("calexp", data_id))
    src = read_source_table(butler.path("src", data_id))
    zero_point = float(calexp.header.get("MAGZERO", np.nan))

    figure = Figure(figsize=FIGURE_INCHES, dpi=FIGURE_DPI, layout="constrained")
    axes = figure.subplots(1, 3, width_ratios=[1.6, 1.0, 1.0])
    figure.suptitle(f"{data_id}   ZP = {zero_point:.3f} mag   {len(src)} src")
    _draw_calexp(axes[0], calexp.image, src)
    match_path, icsrc_path = butler.path("icMatch", data_id), butler.path("icSrc", data_id)
    if not match_path.is_file():
        _draw_residuals(axes[1], "no icMatch product for this frame", calexp.header)
    elif not icsrc_path.is_file():
        _draw_residuals(axes[1], "no icSrc product for this frame", calexp.header)
    else:
        _draw_residuals(axes[1], match_residuals(_read_table(match_path), read_source_table(icsrc_path),
                                                 zero_point), calexp.header)
    ap_corr_path = butler.path("apCorr", data_id)
    _draw_ap_corr(figure, axes[2], _read_yaml(ap_corr_path) if ap_corr_path.is_file() else None, src,
                  calexp.image.shape)
    return figure


def _draw_calexp(ax: Any, image: np.ndarray, src: Any) -> None:
    from astropy.visualization import ZScaleInterval

    finite = np.where(np.isfinite(image), image, 0.0)
    vmin, vmax = ZScaleInterval().get_limits(finite)
    ax.imshow(finite, origin="lower", cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.scatter(src["centroid.sdss.x"], src["centroid.sdss.y"], s=30, facecolors="none", edgecolors="tab:red",
               linewidths=0.6)
    ax.set_title(f"calexp (zscale {vmin:.1f}..{vmax:.1f} DN), src circled")
    ax.set_xlabel("x [pix]")
    ax.set_ylabel("y [pix]")


def match_residuals(matches: Any, sources: Any, zero_point: float) -> tuple[np.ndarray, np.ndarray] | str:
    """(m_ref, m_cal - m_ref) of the matched stars with a positive flux, or a note saying why there are none.

    `matches` is an icMatch table (source.id, ref.mag), `sources` the icSrc table (id, flux.psf, aperture
    corrected like the fluxes photocal fitted); m_cal = zero_point - 2.5 log10(flux.psf).
    """
    needed = {"icMatch": (matches.colnames, ("source.id", "ref.mag")), "icSrc": (sources.colnames, ("id", "flux.psf"))}
    missing = [f"{name} in {table}" for table, (columns, names) in needed.items() for name in names
               if name not in columns]
    if missing:
        return f"no column {', '.join(missing)}"
    if not np.isfinite(zero_point):
        return "no zero point (MAGZERO) in the calexp"
    ids = np.asarray(sources["id"], dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    sorted_ids, sorted_flux = ids[order], np.asarray(sources["flux.psf"], dtype=float)[order]
    match_ids = np.asarray(matches["source.id"], dtype=np.int64)
    at = np.searchsorted(sorted_ids, match_ids)
    joined = at < len(sorted_ids)
    joined[joined] = sorted_ids[at[joined]] == match_ids[joined]
    flux = np.full(len(match_ids), np.nan)
    flux[joined] = sorted_flux[at[joined]]
    ref = np.asarray(matches["ref.mag"], dtype=float)
    good = joined & (flux > 0) & np.isfinite(ref)
    if not good.any():
        return f"none of the {len(match_ids)} matches has an icSrc source with a positive flux.psf"
    calibrated = zero_point - 2.5 * np.log10(flux[good])
    return ref[good], calibrated - ref[good]


def zero_point_error(header: Any) -> float:
    """The zero point's error [mag] from the calexp's FLUXMAG0 and FLUXMAG0ERR (NaN if absent)."""
    flux_mag0, flux_mag0_err = header.get("FLUXMAG0"), header.get("FLUXMAG0ERR")
    if flux_mag0 is None or flux_mag0_err is None or not flux_mag0 > 0:
        return float("nan")
    return float(flux_mag0_err) / (0.4 * np.log(10.0) * float(flux_mag0))


def _draw_residuals(ax: Any, result: tuple[np.ndarray, np.ndarray] | str, header: Any) -> None:
    ax.set_title("photometric residuals of matched reference stars")
    if isinstance(result, str):
        _note(ax, result)
        return
    ref, residual = result
    median = float(np.median(residual))
    scatter = robust_scatter(residual)
    ax.axhspan(median - scatter, median + scatter, color="tab:red", alpha=0.15, linewidth=0)
    ax.axhline(median, color="tab:red", linewidth=1)
    ax.scatter(ref, residual, s=12, color="tab:blue")
    ax.set_xlabel("reference magnitude m_ref [mag]")
    ax.set_ylabel("(ZP - 2.5 log10 flux.psf) - m_ref [mag]")
    n_stars = header.get("ZPNSTARS")
    used = "" if n_stars is None else f", {n_stars} used for the ZP"
    ax.text(0.02, 0.97, f"{len(ref)} matches{used}\nmedian {median:+.3f}, scatter (1.4826 MAD) {scatter:.3f} mag\n"
            f"ZP error {zero_point_error(header):.4f} mag", transform=ax.transAxes, va="top")


def ap_corr_polynomial(record: Any) -> np.ndarray | None:
    """Coefficients of the apCorr polynomial in LSST "standard" order (1, y, x, y², xy, x², ...), or None.

    Looks for a list under a key containing "coef" (at the top level or one mapping down) whose length is
    a triangular number (order + 1)(order + 2)/2.
    """
    if not isinstance(record, dict) or record.get("fit", "polynomial2013") != "polynomial2013":
        return None  # e.g. the LSST-2020 profile's Chebyshev fit: not a polynomial in raw coordinates
    candidates = [record] + [v for v in record.values() if isinstance(v, dict)]
    for mapping in candidates:
        for key, value in mapping.items():
            if "coef" in str(key).lower() and isinstance(value, list) and value:
                coefficients = np.asarray(value, dtype=float).ravel()
                order = (np.sqrt(8 * len(coefficients) + 1) - 3) / 2
                if order == int(order) and np.isfinite(coefficients).all():
                    return coefficients
    return None


def evaluate_standard_polynomial(coefficients: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Σ c·y^(d-k)·x^k over degrees d = 0.. and k = 0..d, in that order (LSST polyStyle "standard")."""
    out = np.zeros(np.broadcast(x, y).shape)
    index, degree = 0, 0
    while index < len(coefficients):
        for k in range(degree + 1):
            out = out + coefficients[index] * y ** (degree - k) * x ** k
            index += 1
        degree += 1
    return out


def _draw_ap_corr(figure: Any, ax: Any, record: Any, src: Any, shape: tuple[int, int]) -> None:
    coefficients = ap_corr_polynomial(record)
    height, width = shape
    if coefficients is not None:
        ys, xs = np.mgrid[0:height:8, 0:width:8].astype(float)
        grid = evaluate_standard_polynomial(coefficients, xs, ys)
        mappable = ax.imshow(grid, origin="lower", extent=(0, width, 0, height), cmap="viridis")
        ax.set_title("aperture correction (apCorr polynomial)")
    elif "aperturecorrection" in src.colnames and np.isfinite(np.asarray(src["aperturecorrection"])).any():
        values = np.asarray(src["aperturecorrection"], dtype=float)
        good = np.isfinite(values)
        mappable = ax.scatter(np.asarray(src["centroid.sdss.x"])[good], np.asarray(src["centroid.sdss.y"])[good],
                              c=values[good], s=14, cmap="viridis")
        ax.set_xlim(0, width)
        ax.set_ylim(0, height)
        ax.set_title("aperture correction at src positions")
    else:
        ax.set_title("aperture correction")
        _note(ax, "no apCorr product and no aperture correction in src")
        return
    ax.set_aspect("equal")
    ax.set_xlabel("x [pix]")
    figure.colorbar(mappable, ax=ax, shrink=0.8)


def _note(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _read_table(path: Path) -> Any:
    from astropy.table import Table

    return Table.read(path, hdu=1, unit_parse_strict="silent")


def _read_yaml(path: Path) -> Any:
    import yaml

    return yaml.safe_load(path.read_text())


def write_index(output_root: Path, header: Sequence[str], rows: Sequence[Sequence[str]],
                png_paths: Sequence[str | None]) -> Path:
    """`<output>/qa/index.html`: the summary table, each frame linking to its PNG.

    `png_paths` are relative to the output repository and lie under `qa/` (None: no PNG for that row).
    """
    from processccd.butler import atomic_path

    index = Path(output_root) / QA_DIR / "index.html"
    lines = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'><title>processCcd QA</title>",
             "<style>table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 6px;"
             "text-align:right}img{max-width:100%}</style></head><body>",
             "<h1>processCcd quick-look QA</h1>", "<table>",
             "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    links = [None if png is None else Path(png).relative_to(QA_DIR).as_posix() for png in png_paths]
    for row, link in zip(rows, links, strict=True):
        cells = [html.escape(c) for c in row]
        if link:
            cells[0] = f"<a href='{html.escape(link)}'>{cells[0]}</a>"
        lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    lines.append("</table>")
    for row, link in zip(rows, links, strict=True):
        if link:
            lines.append(f"<h2>{html.escape(row[0])}</h2><img src='{html.escape(link)}' alt='{html.escape(row[0])}'>")
    lines.append("</body></html>")
    with atomic_path(index) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return index
