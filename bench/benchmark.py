"""Benchmark (not a test): CPU seconds per frame of each pipeline stage on the demo frames, one core.

    .venv/bin/python bench/benchmark.py [--repeat 3] [--stages exposure|all] [--json FILE]

Stages: make_exposure (read fpC/fpM/tsField/psField/asTrans, variance, mask, WCS fit, PSF),
background (the first 512-px background), calibrate (detection x10 + icSrc measurement),
detection (final), measurement (final src). Prints the median over repeats per frame and stage,
the totals, and the peak RSS of the process.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from processccd.background import estimate_background
from processccd.butler import Butler
from processccd.dataid import DataId
from processccd.image import mask_bit
from processccd.meas.shape import psf_adaptive_sigma
from processccd.tasks.make_exposure import make_exposure
from processccd.tasks.measurement import MeasurementTask
from processccd.tasks.process_ccd import BACKGROUND_IGNORED_PLANES, ProcessCcdConfig, ProcessCcdTask

ROOT = Path(__file__).resolve().parents[1]
FRAMES = [DataId(run=run, camcol=4, field=field, filter=f, rerun=40)
          for run, field in ((4192, 300), (6377, 399)) for f in "ugriz"]


def time_frame(butler: Butler, data_id: DataId, all_stages: bool) -> dict[str, float]:
    """Seconds of each stage for one frame."""
    config = ProcessCcdConfig()
    times: dict[str, float] = {}
    t0 = time.process_time()
    exposure = make_exposure(butler, data_id, config.exposure)
    t1 = time.process_time()
    ignored = sum(mask_bit(p) for p in BACKGROUND_IGNORED_PLANES)
    background = estimate_background(exposure.image, exposure.mask, ignored, config.background_bin_size)
    exposure.image = (exposure.image - background.image).astype(np.float32)
    t2 = time.process_time()
    times["make_exposure"], times["background"] = t1 - t0, t2 - t1
    if not all_stages:
        return times
    psf_sigma = psf_adaptive_sigma(exposure.psf.compute_image(*config.psf_sigma_position))
    measurement = MeasurementTask(config.measurement)
    calib = ProcessCcdTask._detect(exposure, psf_sigma, config.calibrate_detection, "bench")
    measurement.run(exposure, calib.footprints, 1, "bench")
    t3 = time.process_time()
    final = ProcessCcdTask._detect(exposure, psf_sigma, config.detection, "bench")
    t4 = time.process_time()
    measurement.run(exposure, final.footprints, len(calib.footprints) + 1, "bench")
    t5 = time.process_time()
    times.update(calibrate=t3 - t2, detection=t4 - t3, measurement=t5 - t4, n_src=len(final.footprints))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--stages", choices=["exposure", "all"], default="all")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    butler = Butler(ROOT / "input")
    all_stages = args.stages == "all"
    time_frame(butler, FRAMES[0], all_stages)  # warm-up (imports, caches)
    results = {}
    for data_id in FRAMES:
        runs = [time_frame(butler, data_id, all_stages) for _ in range(args.repeat)]
        results[data_id.label()] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    stages = [k for k in next(iter(results.values())) if k != "n_src"]
    print(f"{'frame':<12}" + "".join(f"{s:>15}" for s in stages) + f"{'total':>10}")
    for label, row in results.items():
        total = sum(row[s] for s in stages)
        print(f"{label:<12}" + "".join(f"{row[s]:>15.3f}" for s in stages) + f"{total:>10.3f}")
    mean = {s: statistics.fmean(r[s] for r in results.values()) for s in stages}
    print(f"{'mean/frame':<12}" + "".join(f"{mean[s]:>15.3f}" for s in stages) + f"{sum(mean.values()):>10.3f}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak_mb:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps({"frames": results, "mean": mean, "peak_rss_mb": peak_mb}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
