"""Benchmark (not a test): flux.kron (sep, the LSST-2020 profile) against SExtractor's FLUX_AUTO on the demo frames.

    .venv/bin/python bench/kron_vs_sextractor.py OUTPUT [--input input] [--isolation 15] [--json FILE]

OUTPUT: a process-ccd output repository of the 10 demo frames made with measurement.kron_flux on (e.g.
`--config-file configs/processCcd-lsst2020.yaml`). SExtractor runs on the same prepared frames as
bench/demo_benchmark.py (fpC - 1000, trimmed, float32, its own 512-px background, the frame's PSF-width
Gaussian filter, 5 sigma of the filtered image, bench/sextractor/lsst-like.sex, PHOT_AUTOPARAMS 2.5, 3.5).
Sources are matched by pixel position (0.5 px; SExtractor's X_IMAGE - 1). Compared: isolated (no other src
source within --isolation px, no other SExtractor detection either), unsaturated (flags.pixel.saturated.any
false, SExtractor FLAGS 0), not at the edge, S/N > 50 (flux.psf / flux.psf.err). Prints per frame and pooled
the median of flux.kron / FLUX_AUTO and its scatter (1.4826 MAD).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits
from scipy.spatial import cKDTree

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))
import demo_benchmark  # noqa: E402  (the prepared frames and the SExtractor command, reused)

from processccd.butler import Butler  # noqa: E402
from processccd.table import read_source_columns  # noqa: E402

COLUMNS = ("centroid.sdss.x", "centroid.sdss.y", "flux.kron", "flux.kron.flags", "flux.psf", "flux.psf.err",
           "flags.pixel.saturated.any", "flags.pixel.edge")


def sextractor_catalog(path: Path) -> dict[str, np.ndarray]:
    with fits.open(path) as hdus:
        data = hdus["LDAC_OBJECTS"].data
        return {"x": np.asarray(data["X_IMAGE"], float) - 1.0, "y": np.asarray(data["Y_IMAGE"], float) - 1.0,
                "flux": np.asarray(data["FLUX_AUTO"], float), "flags": np.asarray(data["FLAGS"], int)}


def isolated(x: np.ndarray, y: np.ndarray, radius: float) -> np.ndarray:
    """Sources with no other one within `radius` px."""
    tree = cKDTree(np.column_stack([x, y]))
    counts = np.array([len(found) for found in tree.query_ball_point(np.column_stack([x, y]), radius)])
    return counts == 1


def robust(values: np.ndarray) -> tuple[float, float]:
    median = float(np.median(values))
    return median, float(1.4826 * np.median(np.abs(values - median)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", type=Path)
    parser.add_argument("--input", type=Path, default=demo_benchmark.ROOT / "input")
    parser.add_argument("--isolation", type=float, default=15.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    executable = demo_benchmark.tool("source-extractor")
    butler = Butler(args.output, args.output)
    results, pooled = {}, []
    with tempfile.TemporaryDirectory() as workdir:
        frames = demo_benchmark.prepare_sextractor_frames(args.input, Path(workdir))
        for frame, data_id in zip(frames, demo_benchmark.benchmark.FRAMES, strict=True):
            threshold = demo_benchmark.LSST_THRESHOLD_SIGMAS * frame["noise_factor"]
            demo_benchmark.run_child(demo_benchmark.sextractor_command(executable, frame, threshold))
            sex = sextractor_catalog(frame["catalog"])
            ours = read_source_columns(butler.path("src", data_id), COLUMNS)
            x, y = ours["centroid.sdss.x"], ours["centroid.sdss.y"]
            good = np.isfinite(x) & np.isfinite(y)
            x, y = np.where(good, x, -1e6), np.where(good, y, -1e6)
            distance, match = cKDTree(np.column_stack([sex["x"], sex["y"]])).query(np.column_stack([x, y]))
            matched = distance < 0.5
            match = np.where(matched, match, 0)
            with np.errstate(divide="ignore", invalid="ignore"):
                snr = ours["flux.psf"] / ours["flux.psf.err"]
            alone = isolated(x, y, args.isolation) & isolated(sex["x"], sex["y"], args.isolation)[match]
            keep = (matched & good & alone & (sex["flags"][match] == 0) & ~ours["flags.pixel.saturated.any"]
                    & ~ours["flags.pixel.edge"] & ~ours["flux.kron.flags"] & (snr > 50) & (sex["flux"][match] > 0))
            ratio = ours["flux.kron"][keep] / sex["flux"][match[keep]]
            pooled.append(ratio)
            median, scatter = robust(ratio) if len(ratio) else (np.nan, np.nan)
            results[frame["label"]] = {"n": int(len(ratio)), "median": median, "scatter": scatter,
                                       "n_matched": int(matched.sum()), "n_ours": len(x), "n_sextractor": len(sex["x"])}
            print(f"{frame['label']:<14} n={len(ratio):4d}  median {median:.4f}  scatter {scatter:.4f}  "
                  f"(matched {int(matched.sum())} of {len(x)} ours, {len(sex['x'])} SExtractor)")
    allratio = np.concatenate(pooled)
    median, scatter = robust(allratio)
    results["all"] = {"n": int(len(allratio)), "median": median, "scatter": scatter}
    print(f"{'all':<14} n={len(allratio):4d}  median {median:.4f}  scatter {scatter:.4f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
