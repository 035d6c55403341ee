"""Benchmark (not a test): CPU seconds per frame of each pipeline stage on the 10 demo frames, one core.

    .venv/bin/python bench/benchmark.py [--repeat 3] [--frames N] [--json FILE] [--config-file FILE] [--detail]

Stages: make_exposure (read the five inputs, variance, mask, WCS fit, PSF), calibrate (background,
bright detection, icSrc measurement, matching, aperture correction, zero point), detection (final) and
measurement (final src, split by algorithm), write (all products). Prints the median over repeats per
frame, the mean per frame, and the peak RSS. Set OMP_NUM_THREADS=1 for a one-core figure.

`--detail` also splits each stage into its parts (`StageDetail`: the reading of each input, the calibrate
stage's background / detection / icSrc measurement / calibration, detection's smoothing, clipped stdev,
footprints and background, the writing of each product) and prints the non-model part of the frame (the total
without the multishapelet step). The wrappers that time the parts cost ~1 ms per frame.
"""

from __future__ import annotations

import argparse
import collections.abc
import contextlib
import functools
import json
import logging
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from processccd import detection as detection_module
from processccd.butler import Butler
from processccd.config import load_config
from processccd.dataid import DataId
from processccd.tasks import process_ccd as process_ccd_module
from processccd.tasks.calibrate import CalibrateTask
from processccd.tasks.make_exposure import make_exposure
from processccd.tasks.measurement import MeasurementTask
from processccd.tasks.process_ccd import ProcessCcdTask, total_background

ROOT = Path(__file__).resolve().parents[1]
FRAMES = [DataId(run=run, camcol=4, field=field, filter=f, rerun=40)
          for run, field in ((4192, 300), (6377, 399)) for f in "ugriz"]


class StageDetail:
    """CPU seconds of the parts of each stage, by wrappers around the functions the stages call (installed by
    `install`, for this process): parts[stage: part] accumulates while `stage` is the current stage."""

    def __init__(self) -> None:
        self.stage = ""
        self.parts: dict[str, float] = {}

    @contextlib.contextmanager
    def timed(self, part: str) -> collections.abc.Iterator[None]:
        start = time.process_time()
        try:
            yield
        finally:
            key = f"{self.stage}: {part}"
            self.parts[key] = self.parts.get(key, 0.0) + time.process_time() - start

    def _wrap(self, owner: object, name: str, part: str | collections.abc.Callable[..., str]) -> None:
        original = getattr(owner, name)
        original = original.__func__ if isinstance(original, staticmethod) else original

        @functools.wraps(original)
        def wrapper(*args: object, **kwargs: object) -> object:
            with self.timed(part(*args, **kwargs) if callable(part) else part):
                return original(*args, **kwargs)

        setattr(owner, name, staticmethod(wrapper) if isinstance(vars(owner).get(name), staticmethod) else wrapper)

    def install(self) -> None:
        self._wrap(Butler, "get", lambda butler, name, *rest, **kw: f"read {name}")
        self._wrap(Butler, "put", lambda butler, name, *rest, **kw: f"write {name}")
        self._wrap(process_ccd_module, "estimate_background", "background")
        self._wrap(ProcessCcdTask, "_detect", "detection (all)")
        self._wrap(MeasurementTask, "run", "icSrc measurement")
        self._wrap(CalibrateTask, "run", "matching + apCorr + photocal")
        self._wrap(detection_module, "smooth_middle", "detection: smoothing")
        self._wrap(detection_module, "clipped_stdev", "detection: clipped stdev")
        self._wrap(detection_module, "_label_pixels", "detection: footprints")
        self._wrap(detection_module, "_build_footprints", "detection: footprints")
        self._wrap(detection_module, "estimate_background", "detection: background")


def time_frame(task: ProcessCcdTask, data_id: DataId, detail: StageDetail | None = None) -> dict[str, float]:
    """CPU seconds of each stage (and measurement step) for one frame; with `detail` (installed), also of the
    parts of each stage, keyed "stage: part"."""
    times: dict[str, float] = {}
    clock = time.process_time
    detail = detail or StageDetail()
    detail.parts = {}
    detail.stage = "make_exposure"
    t0 = clock()
    exposure = make_exposure(task.butler, data_id, task.config.exposure)
    t1 = clock()
    detail.stage = "calibrate"
    calib = task.calibrate_stage(exposure)
    t2 = clock()
    detail.stage = "detection"
    psf_sigma = task.psf_sigma(exposure)
    detection = task._detect(exposure, psf_sigma, task.config.detection, "bench")
    t3 = clock()
    detail.stage = "measurement"
    measurement = MeasurementTask(task.config.measurement)
    columns = measurement.run(exposure, detection.footprints, calib.n_sources + 1, "bench", detection.threshold,
                              psf_sigma)
    t4 = clock()
    detail.stage = "write"
    background = total_background(calib.backgrounds + (detection.background,))
    task._write(data_id, exposure, background, calib.columns, columns, calib.calibration)
    t5 = clock()
    times.update({"make_exposure": t1 - t0, "calibrate": t2 - t1, "detection": t3 - t2, "measurement": t4 - t3,
                  "write": t5 - t4})
    times.update({f"  {k}": v for k, v in measurement.timings.items()})
    times.update({f"    {k}": v for k, v in detail.parts.items() if not k.startswith("measurement:")})
    times["n_src"] = len(detection.footprints)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--frames", type=int, default=len(FRAMES))
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--config-file", type=Path, action="append", default=[],
                        help="process-ccd config file(s) on top of the defaults, e.g. configs/processCcd-lsst2020.yaml")
    parser.add_argument("--detail", action="store_true", help="also time the parts of each stage (StageDetail)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    detail = StageDetail()
    if args.detail:
        detail.install()
    with tempfile.TemporaryDirectory() as output:
        task = ProcessCcdTask(Butler(ROOT / "input", output), load_config(args.config_file))
        time_frame(task, FRAMES[0], detail)  # warm-up (imports, caches)
        results = {}
        for data_id in FRAMES[: args.frames]:
            runs = [time_frame(task, data_id, detail) for _ in range(args.repeat)]
            keys = dict.fromkeys(k for r in runs for k in r)  # a part may be absent from a run
            results[data_id.label()] = {k: statistics.median(r.get(k, 0.0) for r in runs) for k in keys}
    stages = list(dict.fromkeys(k for r in results.values() for k in r if k != "n_src"))
    mean = {s: statistics.fmean(r.get(s, 0.0) for r in results.values()) for s in stages}
    top = [s for s in stages if not s.startswith(" ")]
    print(f"{'frame':<12}{'n_src':>7}" + "".join(f"{s:>14}" for s in top) + f"{'total':>10}")
    for label, row in results.items():
        print(f"{label:<12}{int(row['n_src']):>7}" + "".join(f"{row[s]:>14.3f}" for s in top)
              + f"{sum(row[s] for s in top):>10.3f}")
    print(f"{'mean/frame':<19}" + "".join(f"{mean[s]:>14.3f}" for s in top) + f"{sum(mean[s] for s in top):>10.3f}")
    print("measurement steps, mean CPU s per frame:")
    for s in stages:
        if s.startswith("  ") and not s.startswith("    "):
            print(f"  {s.strip():<32}{mean[s]:8.3f}")
    if args.detail:
        print("parts of the stages, mean CPU s per frame:")
        for s in stages:
            if s.startswith("    "):
                print(f"  {s.strip():<50}{mean[s]:8.4f}")
        model = sum(v for k, v in mean.items() if k.strip() == "multishapelet")
        print(f"non-model part (total - multishapelet): {sum(mean[s] for s in top) - model:.3f} s per frame")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {peak_mb:.0f} MB")
    if args.json:
        args.json.write_text(json.dumps({"frames": results, "mean": mean, "peak_rss_mb": peak_mb}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
