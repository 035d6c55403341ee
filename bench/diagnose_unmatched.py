"""Diagnose the sources that one list has and the other lacks (issue 16), frame by frame.

    .venv/bin/python bench/diagnose_unmatched.py OUTPUT [--input input] [--expected detected-sources.txt.expected]
        [--snr 10] [--frame '6377 g' ...] [--details] [--json FILE]

OUTPUT is a process-ccd output repository of the demo frames (its src catalogues, with the extra columns
peak.x, peak.y and footprint.npix, and its calexpBackground images). Both lists are matched per frame by
sky position exactly as `compare-results` does (1", one-to-one, closest first). For every unmatched source
with S/N > --snr (flux.psf / flux.psf.err, our own S/N for ours) the frame's final detection is re-run
(make_exposure, calibration stage, smoothing of E2) and the tool prints: the footprint of ours that holds
the source's pixel (bbox, npix, whether it touches the border of the searched region, our peak and the
number of local maxima, with the 2013 margin rule, it holds), the smoothed value there against the
threshold, the total background there, the mask bits in the 3x3 pixels around it and in the footprint, and
the nearest source of the other list (distance, S/N, whether that one is matched).

Each unmatched source is put in one class, tested in this order:

- ``edge band``: its footprint reaches the first/last row or column of the searched region (15 px in);
- ``saturated/bleed halo``: its footprint holds SAT pixels;
- ``peak choice``: it shares a footprint with a source of the other list (the footprint gave one source,
  the two lists put it at different peaks);
- ``threshold borderline``: the footprint's smoothed maximum is within 5 % of the threshold, or the
  source lies in no footprint of ours at all;
- ``other``.

The class counts per frame and overall are printed as a table; --json writes every record. --targets also
prints the figures issue 16 sets targets for (completeness and purity at S/N > 10 and at all S/N, overall and
worst frame; ids equal; extendedness agreement at S/N > 20, which compare-results has no bin for; combo
NaN-pattern disagreements; source counts per frame).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from processccd.background import clipped_stdev
from processccd.butler import Butler
from processccd.comparison import ALL_SCOPE, compare_lists, frame_label, match_sky
from processccd.dataid import FILTERS, DataId
from processccd.detection import detect_sources, smooth_middle
from processccd.image import MASK_PLANES, mask_bit
from processccd.source_list import COLUMNS, ID_FRAME_SHIFT, read_list
from processccd.table import read_source_columns
from processccd.tasks.make_exposure import make_exposure
from processccd.tasks.process_ccd import ProcessCcdTask

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("edge band", "saturated/bleed halo", "peak choice", "threshold borderline", "other")
EXTRA = ("peak.x", "peak.y", "footprint.npix")
BORDERLINE = 0.05  # footprint maximum within this fraction of the threshold


@dataclass
class Record:
    """One unmatched source and what was found about it."""

    frame: str
    side: str  # "ours" or "expected"
    id: int
    x: float
    y: float
    snr: float
    badcentroid: bool
    footprint: int  # our source index whose footprint holds the pixel; -1: none
    bbox: list[int] = field(default_factory=list)
    npix: int = 0
    touches_border: bool = False
    our_peak: list[float] = field(default_factory=list)  # x, y, smoothed value
    n_local_maxima: int = 0
    smoothed: float = float("nan")
    smoothed_max: float = float("nan")  # of the footprint
    threshold: float = float("nan")
    background: float = float("nan")
    mask_3x3: list[str] = field(default_factory=list)
    footprint_mask: dict[str, int] = field(default_factory=dict)
    nearest_other: dict[str, float] = field(default_factory=dict)
    shares_footprint_with_other: bool = False
    klass: str = "other"


@dataclass
class FrameDetection:
    """The final detection of one frame, re-run: smoothed E2 (full frame, NaN outside), labels, threshold."""

    smoothed: np.ndarray
    labels: np.ndarray
    threshold: float
    mask: np.ndarray
    border: int
    n_footprints: int


def rerun_detection(task: ProcessCcdTask, data_id: DataId) -> FrameDetection:
    """make_exposure, the calibration stage and the final detection of one frame (as process-ccd does)."""
    exposure = make_exposure(task.butler, data_id, task.config.exposure)
    task.calibrate_stage(exposure)
    sigma = task.psf_sigma(exposure)
    config = task.config.detection
    middle = smooth_middle(exposure.image, sigma, config.kernel_size)
    border = config.kernel_size // 2
    smoothed = np.full(exposure.image.shape, np.nan, dtype=np.float32)
    smoothed[border:-border, border:-border] = middle
    result = detect_sources(exposure.image, exposure.mask, sigma, config, logger_name="diagnose")
    threshold = config.threshold * clipped_stdev(middle)
    assert np.isclose(threshold, result.threshold)
    labels = result.footprints.label_image(exposure.image.shape)
    return FrameDetection(smoothed, labels, float(threshold), result.mask, border, len(result.footprints))


def local_maxima(smoothed: np.ndarray, ys: np.ndarray, xs: np.ndarray, region: tuple[int, int, int, int]
                 ) -> np.ndarray:
    """Indices of the pixels (ys, xs) with no strictly larger 8-neighbour, leaving out the first and last
    rows/columns of `region` (x0, y0, x1, y1 inclusive)."""
    x0, y0, x1, y1 = region
    inner = (xs > x0) & (xs < x1) & (ys > y0) & (ys < y1)
    value = smoothed[ys, xs]
    is_max = inner.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dx or dy:
                yy = np.clip(ys + dy, 0, smoothed.shape[0] - 1)
                xx = np.clip(xs + dx, 0, smoothed.shape[1] - 1)
                neighbour = smoothed[yy, xx]
                is_max &= ~(np.nan_to_num(neighbour, nan=-np.inf) > value)
    return np.flatnonzero(is_max)


def mask_names(bits: int) -> list[str]:
    return [name for name in MASK_PLANES if bits & mask_bit(name)]


def load_ours(output: Path) -> dict[str, np.ndarray]:
    """Every src catalogue of OUTPUT (the 40 columns and the extra diagnostic ones), frames in list order."""
    butler = Butler(output, output)
    data_ids = sorted(butler.discover_outputs("src"), key=lambda d: (FILTERS.index(d.filter), d.run, d.field))
    parts = [read_source_columns(butler.path("src", d), COLUMNS + EXTRA) for d in data_ids]
    return {name: np.concatenate([p[name] for p in parts]) for name in COLUMNS + EXTRA}


def data_id_of(exp_id: int, rerun: int) -> DataId:
    run, filter_index, camcol, field_number = (exp_id // 1_000_000, (exp_id // 100_000) % 10,
                                               (exp_id // 10_000) % 10, exp_id % 10_000)
    return DataId(run=run, camcol=camcol, field=field_number, filter=FILTERS[filter_index], rerun=rerun)


def snr_of(columns: dict[str, np.ndarray]) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(columns["flux.psf"], float) / np.asarray(columns["flux.psf.err"], float)


def describe(rec: Record, det: FrameDetection, background: np.ndarray, ours: dict[str, np.ndarray],
             our_rows: np.ndarray, other_xy: np.ndarray, other_snr: np.ndarray, other_matched: np.ndarray,
             other_in_footprint: np.ndarray) -> None:
    """Fill the record's detection facts and class."""
    height, width = det.labels.shape
    px, py = int(np.floor(rec.x + 0.5)), int(np.floor(rec.y + 0.5))
    px, py = min(max(px, 0), width - 1), min(max(py, 0), height - 1)
    rec.threshold = det.threshold
    rec.smoothed = float(det.smoothed[py, px])
    rec.background = float(background[py, px])
    window = det.mask[max(py - 1, 0):py + 2, max(px - 1, 0):px + 2]
    rec.mask_3x3 = mask_names(int(np.bitwise_or.reduce(window.ravel())))
    label = int(det.labels[py, px])
    if label == 0 and rec.side == "expected":  # the centroid may have wandered off: look within 2 px
        patch = det.labels[max(py - 2, 0):py + 3, max(px - 2, 0):px + 3]
        if patch.any():
            label = int(np.bincount(patch[patch > 0]).argmax())
    rec.footprint = label - 1
    region = (det.border, det.border, width - 1 - det.border, height - 1 - det.border)
    if label:
        ys, xs = np.nonzero(det.labels == label)
        rec.bbox = [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]
        rec.npix = int(ys.size)
        rec.touches_border = bool(xs.min() == region[0] or ys.min() == region[1] or xs.max() == region[2]
                                  or ys.max() == region[3])
        values = det.smoothed[ys, xs]
        rec.smoothed_max = float(values.max())
        rec.n_local_maxima = int(local_maxima(det.smoothed, ys, xs, region).size)
        row = our_rows[label - 1]
        rec.our_peak = [int(ours["peak.x"][row]), int(ours["peak.y"][row]),
                        float(det.smoothed[ours["peak.y"][row], ours["peak.x"][row]])]
        bits = det.mask[ys, xs]
        rec.footprint_mask = {name: int(np.count_nonzero(bits & mask_bit(name)))
                              for name in ("SAT", "INTRP", "CR") if np.any(bits & mask_bit(name))}
        rec.shares_footprint_with_other = bool(np.any(other_in_footprint == label - 1))
    if other_xy.size:
        distance = np.hypot(other_xy[:, 0] - rec.x, other_xy[:, 1] - rec.y)
        k = int(np.argmin(distance))
        rec.nearest_other = {"distance_px": float(distance[k]), "x": float(other_xy[k, 0]),
                             "y": float(other_xy[k, 1]), "snr": float(other_snr[k]),
                             "matched": bool(other_matched[k])}
    if label and rec.touches_border:
        rec.klass = "edge band"
    elif label and "SAT" in rec.footprint_mask:
        rec.klass = "saturated/bleed halo"
    elif label and rec.shares_footprint_with_other:
        rec.klass = "peak choice"
    elif not label or rec.smoothed_max < (1 + BORDERLINE) * det.threshold:
        rec.klass = "threshold borderline"
    else:
        rec.klass = "other"


def footprint_index_of(det: FrameDetection, xy: np.ndarray) -> np.ndarray:
    """Our footprint index (or -1) at the rounded pixel of each position."""
    height, width = det.labels.shape
    px = np.clip(np.floor(xy[:, 0] + 0.5).astype(int), 0, width - 1)
    py = np.clip(np.floor(xy[:, 1] + 0.5).astype(int), 0, height - 1)
    return det.labels[py, px].astype(np.int64) - 1


def diagnose(output: Path, input_root: Path, expected_path: Path, snr_min: float, frames: list[str]
             ) -> tuple[list[Record], dict[str, dict[str, int]]]:
    ours = load_ours(output)
    expected = {name: np.asarray(read_list(expected_path)[name]) for name in COLUMNS}
    ours_frame = ours["id"].astype(np.int64) >> ID_FRAME_SHIFT
    exp_frame = expected["id"].astype(np.int64) >> ID_FRAME_SHIFT
    snr_ours, snr_exp = snr_of(ours), snr_of(expected)
    input_butler = Butler(input_root)
    output_butler = Butler(output, output)
    task = ProcessCcdTask(input_butler)
    records: list[Record] = []
    counts: dict[str, dict[str, int]] = {}
    for exp_id in sorted(set(exp_frame.tolist()) | set(ours_frame.tolist()),
                         key=lambda e: ((e // 100_000) % 10, e // 1_000_000)):
        label = frame_label(exp_id)
        if frames and label not in frames:
            continue
        o_rows = np.flatnonzero(ours_frame == exp_id)
        o_rows = o_rows[np.argsort(ours["id"][o_rows], kind="stable")]
        e_rows = np.flatnonzero(exp_frame == exp_id)
        i1, i2, _ = match_sky(ours["coord.ra"][o_rows], ours["coord.dec"][o_rows],
                              expected["coord.ra"][e_rows], expected["coord.dec"][e_rows], 1.0)
        o_matched = np.zeros(o_rows.size, bool)
        o_matched[i1] = True
        e_matched = np.zeros(e_rows.size, bool)
        e_matched[i2] = True
        o_un = np.flatnonzero(~o_matched & (snr_ours[o_rows] > snr_min))
        e_un = np.flatnonzero(~e_matched & (snr_exp[e_rows] > snr_min))
        counts[label] = dict.fromkeys(CLASSES, 0) | {"ours": 0, "expected": 0}
        if o_un.size == 0 and e_un.size == 0:
            continue
        rerun = input_butler.resolve({"run": [exp_id // 1_000_000]})[0].rerun
        data_id = data_id_of(exp_id, rerun)
        det = rerun_detection(task, data_id)
        if det.n_footprints != o_rows.size:
            logging.warning("%s: re-run detection gives %d footprints, OUTPUT has %d sources", label,
                            det.n_footprints, o_rows.size)
        calexp_background = read_calexp_background(output_butler, data_id)
        o_xy = np.c_[ours["centroid.sdss.x"][o_rows], ours["centroid.sdss.y"][o_rows]]
        e_xy = np.c_[expected["centroid.sdss.x"][e_rows], expected["centroid.sdss.y"][e_rows]]
        o_fp, e_fp = footprint_index_of(det, o_xy), footprint_index_of(det, e_xy)
        for side, rows, unmatched, xy, snr, other_xy, other_snr, other_matched, other_fp, columns in (
            ("ours", o_rows, o_un, o_xy, snr_ours[o_rows], e_xy, snr_exp[e_rows], e_matched,
             e_fp[~e_matched], ours),
            ("expected", e_rows, e_un, e_xy, snr_exp[e_rows], o_xy, snr_ours[o_rows], o_matched,
             o_fp[~o_matched], expected),
        ):
            for k in unmatched:
                row = rows[k]
                rec = Record(label, side, int(columns["id"][row]), float(xy[k, 0]), float(xy[k, 1]),
                             float(snr[k]), bool(columns["flags.badcentroid"][row]), -1)
                describe(rec, det, calexp_background, ours, o_rows, other_xy, other_snr, other_matched, other_fp)
                records.append(rec)
                counts[label][rec.klass] += 1
                counts[label][side] += 1
    return records, counts


def read_calexp_background(butler: Butler, data_id: DataId) -> np.ndarray:
    from astropy.io import fits

    path = butler.path("calexpBackground", data_id)
    with fits.open(path) as hdus:
        return np.asarray(hdus[1].data, dtype=np.float32)


def format_record(rec: Record) -> str:
    other = rec.nearest_other
    text = (f"{rec.frame:7s} {rec.side:8s} ({rec.x:7.1f},{rec.y:7.1f}) S/N {rec.snr:7.1f}"
            f"{' badcen' if rec.badcentroid else ''}  [{rec.klass}]\n")
    if rec.footprint >= 0:
        text += (f"    footprint #{rec.footprint} bbox {rec.bbox} npix {rec.npix}"
                 f"{' TOUCHES BORDER' if rec.touches_border else ''}; our peak ({rec.our_peak[0]},{rec.our_peak[1]})"
                 f" {rec.our_peak[2]:.2f}; {rec.n_local_maxima} local maxima; mask {rec.footprint_mask}\n")
    else:
        text += "    in no footprint of ours\n"
    text += (f"    smoothed here {rec.smoothed:.3f} (footprint max {rec.smoothed_max:.3f}) vs threshold "
             f"{rec.threshold:.3f}; background {rec.background:.2f}; 3x3 mask {rec.mask_3x3}\n")
    if other:
        text += (f"    nearest other: ({other['x']:.1f},{other['y']:.1f}) d={other['distance_px']:.1f} px "
                 f"S/N {other['snr']:.1f} {'matched' if other['matched'] else 'UNMATCHED'}"
                 f"{'; shares the footprint' if rec.shares_footprint_with_other else ''}\n")
    return text


def format_counts(counts: dict[str, dict[str, int]]) -> str:
    header = f"{'frame':8s} {'ours':>5s} {'exp':>5s} " + " ".join(f"{c:>22s}" for c in CLASSES)
    lines = [header]
    total = dict.fromkeys([*CLASSES, "ours", "expected"], 0)
    for label, c in counts.items():
        lines.append(f"{label:8s} {c['ours']:5d} {c['expected']:5d} " + " ".join(f"{c[k]:22d}" for k in CLASSES))
        for key in total:
            total[key] += c[key]
    lines.append(f"{'all':8s} {total['ours']:5d} {total['expected']:5d} "
                 + " ".join(f"{total[k]:22d}" for k in CLASSES))
    return "\n".join(lines)


def target_figures(ours: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> dict[str, float]:
    """The figures of issue 16's targets (see the module docstring)."""
    report = compare_lists(ours, expected)
    overall = report.figures[ALL_SCOPE]
    figures: dict[str, float] = {}
    for suffix in ("snr10", "all"):
        for name in ("completeness", "purity"):
            figures[f"{name}_{suffix}"] = overall[f"{name}_{suffix}"]
            figures[f"{name}_{suffix}_worst_frame"] = min(report.figures[f][f"{name}_{suffix}"] for f in report.frames)
    figures["id_equal_all"] = overall["id_equal_all"]
    figures["nan_mismatch_combo_all"] = overall["nan_mismatch_multishapelet_combo_flux_all"]
    ours_frame = ours["id"].astype(np.int64) >> ID_FRAME_SHIFT
    exp_frame = expected["id"].astype(np.int64) >> ID_FRAME_SHIFT
    agree, total = 0, 0
    snr_exp = snr_of(expected)
    for exp_id in np.unique(exp_frame):
        o_rows, e_rows = np.flatnonzero(ours_frame == exp_id), np.flatnonzero(exp_frame == exp_id)
        i1, i2, _ = match_sky(ours["coord.ra"][o_rows], ours["coord.dec"][o_rows],
                              expected["coord.ra"][e_rows], expected["coord.dec"][e_rows], 1.0)
        bright = snr_exp[e_rows[i2]] > 20
        agree += int(np.sum(ours["classification.extendedness"][o_rows[i1]][bright]
                            == expected["classification.extendedness"][e_rows[i2]][bright]))
        total += int(bright.sum())
        figures[f"n_src {frame_label(int(exp_id))}"] = int(o_rows.size)
    figures["agree_extendedness_snr20"] = agree / total if total else float("nan")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path)
    parser.add_argument("--input", type=Path, default=ROOT / "input")
    parser.add_argument("--expected", type=Path, default=ROOT / "detected-sources.txt.expected")
    parser.add_argument("--snr", type=float, default=10.0)
    parser.add_argument("--frame", action="append", default=[])
    parser.add_argument("--details", action="store_true", help="print every unmatched source")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--targets", action="store_true", help="also print issue 16's target figures")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    records, counts = diagnose(args.output, args.input, args.expected, args.snr, args.frame)
    if args.details:
        for rec in records:
            print(format_record(rec))
    print(f"unmatched sources at S/N > {args.snr:g} by class")
    print(format_counts(counts))
    targets = {}
    if args.targets:
        expected = {name: np.asarray(read_list(args.expected)[name]) for name in COLUMNS}
        targets = target_figures(load_ours(args.output), expected)
        print("\nissue 16 target figures")
        for name, value in targets.items():
            print(f"  {name:36s} {value:.4f}" if isinstance(value, float) else f"  {name:36s} {value}")
    if args.json:
        args.json.write_text(json.dumps({"records": [asdict(r) for r in records], "counts": counts,
                                         "targets": targets}, indent=1))


if __name__ == "__main__":
    main()
