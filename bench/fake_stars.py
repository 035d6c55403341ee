"""Fake-star injection (not a test by itself; tests/test_fake_stars.py runs it on one frame): flux.psf bias.

    .venv/bin/python bench/fake_stars.py [--frames 10] [--stars 150] [--json FILE]

For each demo frame: the exposure as make_exposure makes it, plus `--stars` stars of the frame's own PSF
model (`Psf.compute_image` at each position, scaled to unit sum: the psField KL PSF, 31 x 31) with known
fluxes (S/N 50-500 against the frame's sky variance, log-uniform) on a jittered grid; then the calibration
and final stages as process-ccd runs them, once with the default (2013) configuration and once with
configs/processCcd-lsst2020.yaml. The injected stars are not in the reference catalogue, so the aperture
correction is fitted to the frame's real stars, as for any science source. Measured: flux.psf (aperture
corrected) / injected flux - 1 for the injected stars found within 0.5 px, with S/N > 50, no other source
within 10 px (and, with deblending, not deblended); median and 1.4826 MAD, per frame and pooled.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
import benchmark  # noqa: E402  (the demo frames)

from processccd.butler import Butler  # noqa: E402
from processccd.config import load_config  # noqa: E402
from processccd.dataid import DataId  # noqa: E402
from processccd.tasks.make_exposure import make_exposure  # noqa: E402
from processccd.tasks.process_ccd import ProcessCcdTask  # noqa: E402

PROFILE = ROOT / "configs" / "processCcd-lsst2020.yaml"


def injected_positions(shape: tuple[int, int], n: int, rng: np.random.Generator, margin: int = 40
                       ) -> np.ndarray:
    """(n, 2) x, y on a jittered grid at least `margin` px from the edges."""
    height, width = shape
    columns = int(np.ceil(np.sqrt(n * (width - 2 * margin) / (height - 2 * margin))))
    rows = int(np.ceil(n / columns))
    gx = np.linspace(margin, width - margin, columns)
    gy = np.linspace(margin, height - margin, rows)
    grid = np.array([(x, y) for y in gy for x in gx])[:n]
    return grid + rng.uniform(-5, 5, grid.shape)


def inject(image: np.ndarray, psf, positions: np.ndarray, fluxes: np.ndarray) -> None:
    """Add unit-sum PSF-model stars (in place)."""
    for (x, y), flux in zip(positions, fluxes, strict=True):
        stamp = psf.compute_image(float(x), float(y))
        half = stamp.shape[0] // 2
        cx, cy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        y0, y1, x0, x1 = cy - half, cy + half + 1, cx - half, cx + half + 1
        sy0, sx0 = max(0, -y0), max(0, -x0)
        y0, x0 = max(y0, 0), max(x0, 0)
        y1, x1 = min(y1, image.shape[0]), min(x1, image.shape[1])
        image[y0:y1, x0:x1] += (flux * stamp / stamp.sum())[sy0:sy0 + y1 - y0, sx0:sx0 + x1 - x0].astype(image.dtype)


def measure_frame(data_id: DataId, config_files: list[Path], n_stars: int, seed: int, column: str = "flux.psf"
                  ) -> np.ndarray:
    """`column` (flux.psf) / injected flux of the usable injected stars of one frame."""
    config = load_config(config_files)
    with tempfile.TemporaryDirectory() as output:
        task = ProcessCcdTask(Butler(ROOT / "input", output), config)
        exposure = make_exposure(task.butler, data_id, config.exposure)
        rng = np.random.default_rng(seed)
        positions = injected_positions(exposure.shape, n_stars, rng)
        sky_sigma = float(np.sqrt(np.median(exposure.variance)))
        psf_sigma = task.psf_sigma(exposure)
        noise_per_flux = sky_sigma * np.sqrt(4 * np.pi * psf_sigma**2)
        fluxes = noise_per_flux * np.exp(rng.uniform(np.log(50), np.log(500), n_stars))
        inject(exposure.image, exposure.psf, positions, fluxes)
        calib = task.calibrate_stage(exposure)
        final = task.final_stage(exposure, calib.n_sources + 1, calib.calibration.ap_corr, calib)
    cols = final.columns
    x, y = cols["centroid.sdss.x"], cols["centroid.sdss.y"]
    good = np.isfinite(x) & np.isfinite(y)
    xy = np.column_stack([np.where(good, x, -1e6), np.where(good, y, -1e6)])
    tree = cKDTree(xy)
    distance, index = tree.query(positions)
    neighbours = np.array([len(found) for found in tree.query_ball_point(positions, 10.0)])
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = cols["flux.psf"] / cols["flux.psf.err"]
    usable = (distance < 0.5) & (neighbours == 1) & (snr[index] > 50)
    if "deblend.nchild" in cols:
        usable &= (cols["deblend.nchild"][index] == 0) & (cols["parent"][index] == 0)
    return cols[column][index[usable]] / fluxes[usable]


def robust(values: np.ndarray) -> tuple[float, float]:
    median = float(np.median(values))
    return median, float(1.4826 * np.median(np.abs(values - median)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=len(benchmark.FRAMES))
    parser.add_argument("--stars", type=int, default=150)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results: dict[str, dict] = {}
    for label, files in (("default", []), ("lsst2020", [PROFILE])):
        pooled = []
        for data_id in benchmark.FRAMES[: args.frames]:
            ratio = measure_frame(data_id, files, args.stars, args.seed)
            pooled.append(ratio)
            median, scatter = robust(ratio)
            results.setdefault(label, {})[data_id.label()] = {"n": len(ratio), "bias": median - 1, "scatter": scatter}
            print(f"{label:<9} {data_id.label():<12} n={len(ratio):4d}  bias {100 * (median - 1):+.3f} %  "
                  f"scatter {100 * scatter:.3f} %")
        ratio = np.concatenate(pooled)
        median, scatter = robust(ratio)
        results[label]["all"] = {"n": len(ratio), "bias": median - 1, "scatter": scatter}
        print(f"{label:<9} {'all':<12} n={len(ratio):4d}  bias {100 * (median - 1):+.3f} %  "
              f"scatter {100 * scatter:.3f} %")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
