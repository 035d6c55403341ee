"""Benchmark (not a test): CPU seconds per frame of each pipeline stage on the 10 demo frames, one core.

    .venv/bin/python bench/benchmark.py [--repeat 3] [--frames N] [--json FILE] [--config-file FILE]

Stages: make_exposure (read the five inputs, variance, mask, WCS fit, PSF), calibrate (background,
bright detection, icSrc measurement, matching, aperture correction, zero point), detection (final) and
measurement (final src, split by algorithm), write (all products). Prints the median over repeats per
frame, the mean per frame, and the peak RSS. Set OMP_NUM_THREADS=1 for a one-core figure.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from processccd.butler import Butler
from processccd.config import load_config
from processccd.dataid import DataId
from processccd.tasks.make_exposure import make_exposure
from processccd.tasks.measurement import MeasurementTask
from processccd.tasks.process_ccd import ProcessCcdTask, total_background

ROOT = Path(__file__).resolve().parents[1]
FRAMES = [DataId(run=run, camcol=4, field=field, filter=f, rerun=40)
          for run, field in ((4192, 300), (6377, 399)) for f in "ugriz"]


def time_frame(task: ProcessCcdTask, data_id: DataId) -> dict[str, float]:
    """CPU seconds of each stage (and measurement step) for one frame."""
    times: dict[str, float] = {}
    clock = time.process_time
    t0 = clock()
    exposure = make_exposure(task.butler, data_id, task.config.exposure)
    t1 = clock()
    calib = task.calibrate_stage(exposure)
    t2 = clock()
    psf_sigma = task.psf_sigma(exposure)
    detection = task._detect(exposure, psf_sigma, task.config.detection, "bench")
    t3 = clock()
    measurement = MeasurementTask(task.config.measurement)
    columns = measurement.run(exposure, detection.footprints, calib.n_sources + 1, "bench", detection.threshold,
                              psf_sigma)
    t4 = clock()
    background = total_background(calib.backgrounds + (detection.background,))
    task._write(data_id, exposure, background, calib.columns, columns, calib.calibration)
    t5 = clock()
    times.update({"make_exposure": t1 - t0, "calibrate": t2 - t1, "detection": t3 - t2, "measurement": t4 - t3,
                  "write": t5 - t4})
    times.update({f"  {k}": v for k, v in measurement.timings.items()})
    times["n_src"] = len(detection.footprints)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--frames", type=int, default=len(FRAMES))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--config-file", type=Path, action="append", default=[],
                        help="process-ccd config file(s) on top of the defaults, e.g. configs/processCcd-lsst2020.yaml")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as output:
        task = ProcessCcdTask(Butler(ROOT / "input", output), load_config(args.config_file))
        time_frame(task, FRAMES[0])  # warm-up (imports, caches)
        results = {}
        for data_id in FRAMES[: args.frames]:
            runs = [time_frame(task, data_id) for _ in range(args.repeat)]
            results[data_id.label()] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    stages = [k for k in next(iter(results.values())) if k != "n_src"]
    mean = {s: statistics.fmean(r[s] for r in results.values()) for s in stages}
    top = [s for s in stages if not s.startswith(" ")]
    print(f"{'frame':<12}{'n_src':>7}" + "".join(f"{s:>14}" for s in top) + f"{'total':>10}")
    for label, row in results.items():
        print(f"{label:<12}{int(row['n_src']):>7}" + "".join(f"{row[s]:>14.3f}" for s in top)
              + f"{sum(row[s] for s in top):>10.3f}")
    print(f"{'mean/frame':<19}" + "".join(f"{mean[s]:>14.3f}" for s in top) + f"{sum(mean[s] for s in top):>10.3f}")
    print("measurement steps, mean CPU s per frame:")
    for s in stages:
        if s.startswith(" "):
            print(f"  {s.strip():<32}{mean[s]:8.3f}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak_mb:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps({"frames": results, "mean": mean, "peak_rss_mb": peak_mb}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
