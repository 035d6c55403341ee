#!/usr/bin/env python
"""Benchmark (not a test): the multishapelet model-flux step, its cost and what a change did to its results.

    .venv/bin/python bench/model_fit_compare.py time [--repeat 3] [--frames N] [--json FILE]
    .venv/bin/python bench/model_fit_compare.py profile [--frames N]
    .venv/bin/python bench/model_fit_compare.py compare OUTPUT_BEFORE OUTPUT_AFTER

`time`: CPU seconds (time.process_time) per frame of the final measurement's multishapelet step and of the
rest of the measurement, for the code on the Python path (run it with PYTHONPATH=OTHER_CHECKOUT/src to time
another checkout in the same environment; interleave the two under load). Medians over --repeat per frame.

`profile`: where the model-flux time goes: per source the PSF-model fit and the exp / dev / combo fits timed
apart; LM evaluations (cost-only and cost+derivatives) per fit and fit pixels, counted by running the
optimiser's Python source (`fit_ellipse.py_func`) over the compiled evaluation kernels, so the counts are
those of the compiled code; and the CPU nanoseconds per pixel and evaluation.

`compare`: two process-ccd output trees of the same frames (src tables, ap-corrected as written): for each
of multishapelet.{exp,dev,combo}.flux the median and the scatter (1.4826 MAD) of the relative difference over
sources with S/N > 50 in BEFORE, the largest one, the NaN-pattern changes; the classification.extendedness
flips; and the largest relative difference of every other column.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL_COLUMNS = ("multishapelet.exp.flux", "multishapelet.dev.flux", "multishapelet.combo.flux")


def _frames():
    from processccd.dataid import DataId

    return [DataId(run=run, camcol=4, field=field, filter=f, rerun=40)
            for run, field in ((4192, 300), (6377, 399)) for f in "ugriz"]


def _prepared(task, data_id):
    """(exposure, footprints, first id) of the final measurement of one frame."""
    from processccd.tasks.make_exposure import make_exposure

    exposure = make_exposure(task.butler, data_id, task.config.exposure)
    calib = task.calibrate_stage(exposure)
    detection = task._detect(exposure, task.psf_sigma(exposure), task.config.detection, "bench")
    return exposure, detection.footprints, calib.n_sources + 1


def cmd_time(args: argparse.Namespace) -> None:
    import processccd
    from processccd.butler import Butler
    from processccd.tasks.measurement import MeasurementTask
    from processccd.tasks.process_ccd import ProcessCcdTask

    with tempfile.TemporaryDirectory() as output:
        task = ProcessCcdTask(Butler(ROOT / "input", output))
        frames = _frames()[: args.frames]
        prepared = {d.label(): _prepared(task, d) for d in frames}
        MeasurementTask(task.config.measurement).run(*prepared[frames[0].label()], "bench")  # warm-up
        results: dict[str, dict[str, float]] = {}
        for label, (exposure, footprints, first) in prepared.items():
            runs = []
            for _ in range(args.repeat):
                measurement = MeasurementTask(task.config.measurement)
                t0 = time.process_time()
                measurement.run(exposure, footprints, first, "bench")
                total = time.process_time() - t0
                model = measurement.timings.get("multishapelet", 0.0)
                runs.append({"multishapelet": model, "rest of measurement": total - model})
            results[label] = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            results[label]["n_src"] = len(footprints)
    print(f"code: {Path(processccd.__file__).parent}")
    print(f"{'frame':<14}{'n_src':>6}{'multishapelet':>15}{'rest of meas.':>15}")
    for label, row in results.items():
        print(f"{label:<14}{int(row['n_src']):>6}{row['multishapelet']:>15.4f}{row['rest of measurement']:>15.4f}")
    mean = {k: statistics.fmean(r[k] for r in results.values()) for k in ("multishapelet", "rest of measurement")}
    print(f"{'mean/frame':<20}{mean['multishapelet']:>15.4f}{mean['rest of measurement']:>15.4f}")
    if args.json:
        args.json.write_text(json.dumps({"code": str(Path(processccd.__file__).parent), "frames": results,
                                         "mean": mean}, indent=1))


class _Counter:
    """Counts the evaluations of the optimiser run through `fit_ellipse.py_func`."""

    def __init__(self, kernels) -> None:
        self.kernels = kernels
        self.cost = self.derivatives = 0
        self.fits: list[tuple[int, int, int]] = []  # (pixels, cost evaluations, derivative evaluations)

    def install(self) -> None:
        k = self.kernels
        compiled = {name: getattr(k, name) for name in ("_cost", "_derivatives", "_evaluate", "fit_ellipse")}

        def cost(*a):
            self.cost += 1
            return compiled["_cost"](*a)

        def derivatives(*a):
            self.derivatives += 1
            return compiled["_derivatives"](*a)

        def evaluate(p, dx, dy, data, scales, offsets, norm_fluxes, weight, work, hessian, gradient):
            k._model_coefficients(p, scales, offsets, norm_fluxes, weight, work)
            ok, c, a = cost(dx, dy, data, work)
            if ok:
                derivatives(dx, dy, data, work, a, hessian, gradient)
            return ok, c, a

        def fit_ellipse(dx, *a):
            before = (self.cost, self.derivatives)
            out = compiled["fit_ellipse"].py_func(dx, *a)
            self.fits.append((dx.size, self.cost - before[0], self.derivatives - before[1]))
            return out

        k._cost, k._derivatives, k._evaluate, k.fit_ellipse = cost, derivatives, evaluate, fit_ellipse
        k.fit_profile = k.fit_profile.py_func
        k.source_model_fluxes = k.source_model_fluxes.py_func


def cmd_profile(args: argparse.Namespace) -> None:
    from processccd.butler import Butler
    from processccd.meas import model_flux
    from processccd.meas import model_flux_kernels as kernels
    from processccd.tasks.measurement import MeasurementTask
    from processccd.tasks.process_ccd import ProcessCcdTask

    timings = {"psf model": 0.0, "exp+dev+combo": 0.0}
    captured: list[tuple] = []
    original_fit_psf = model_flux.fit_psf_model
    original_fluxes = model_flux.model_fluxes

    def fit_psf_model(*a, **kw):
        t0 = time.process_time()
        out = original_fit_psf(*a, **kw)
        timings["psf model"] += time.process_time() - t0
        return out

    def model_fluxes(image, variance, mask, fy, fx, *a, **kw):
        t0 = time.process_time()
        out = original_fluxes(image, variance, mask, fy, fx, *a, **kw)
        timings["exp+dev+combo"] += time.process_time() - t0
        if len(captured) < args.capture:
            captured.append((image.copy(), variance, mask, fy, fx, a, kw))
        return out

    import processccd.tasks.measurement as measurement_module

    measurement_module.fit_psf_model, measurement_module.model_fluxes = fit_psf_model, model_fluxes
    n_sources = 0
    with tempfile.TemporaryDirectory() as output:
        task = ProcessCcdTask(Butler(ROOT / "input", output))
        for data_id in _frames()[: args.frames]:
            exposure, footprints, first = _prepared(task, data_id)
            MeasurementTask(task.config.measurement).run(exposure, footprints, first, "bench")
            n_sources += len(footprints)
    print(f"{n_sources} sources in {args.frames} frames; CPU s per source: "
          + ", ".join(f"{k} {v / n_sources * 1e3:.3f} ms" for k, v in timings.items()))
    counter = _Counter(kernels)
    counter.install()
    for image, variance, mask, fy, fx, a, kw in captured:
        original_fluxes(image, variance, mask, fy, fx, *a, **kw)
    fits = np.array(counter.fits)
    pixels, costs, derivs = fits.T
    print(f"{len(captured)} sources re-run with counting: {len(fits)} ellipse fits, "
          f"{len(fits) / len(captured):.2f} per source")
    print(f"per fit: pixels median {np.median(pixels):.0f} mean {pixels.mean():.0f}; cost evaluations mean "
          f"{costs.mean():.1f} (median {np.median(costs):.0f}, max {costs.max()}); derivative evaluations mean "
          f"{derivs.mean():.1f}")
    print(f"pixel-evaluations per source: cost {np.sum(pixels * costs) / len(captured):.0f}, "
          f"derivatives {np.sum(pixels * derivs) / len(captured):.0f}")
    fit_time = timings["exp+dev+combo"] / n_sources * len(captured)
    print(f"=> {fit_time / max(np.sum(pixels * (costs + derivs)), 1) * 1e9:.1f} ns per pixel-evaluation "
          f"(exp+dev+combo CPU of the captured sources / their pixel-evaluations, approx.)")


def _read_src(root: Path) -> dict[str, dict[str, np.ndarray]]:
    from astropy.io import fits

    tables = {}
    for path in sorted(root.rglob("src-*.fits")):
        with fits.open(path) as hdus:
            data = hdus[1].data
            tables[path.name] = {name: np.asarray(data[name]) for name in data.columns.names}
    return tables


def cmd_compare(args: argparse.Namespace) -> None:
    before, after = _read_src(args.before), _read_src(args.after)
    if set(before) != set(after) or not before:
        sys.exit(f"different or no src tables: {sorted(before)} vs {sorted(after)}")
    names = list(next(iter(before.values())))
    joined = {name: (np.concatenate([before[f][name] for f in before]),
                     np.concatenate([after[f][name] for f in before])) for name in names}
    print(f"{len(before)} src tables, {joined['id'][0].size} sources")
    for name in MODEL_COLUMNS:
        a, b = joined[name]
        err = joined[name + ".err"][0]
        both = np.isfinite(a) & np.isfinite(b)
        bright = both & (a / err > 50)
        rel = (b[bright] - a[bright]) / np.abs(a[bright])
        median = float(np.median(np.abs(rel))) if rel.size else float("nan")
        scatter = float(1.4826 * np.median(np.abs(rel - np.median(rel)))) if rel.size else float("nan")
        worst = float(np.max(np.abs(rel))) if rel.size else float("nan")
        nan_changes = int(np.count_nonzero(np.isfinite(a) != np.isfinite(b)))
        rel_all = np.abs(b[both] - a[both]) / np.maximum(np.abs(a[both]), 1e-300)
        print(f"{name:<28} S/N>50: n {rel.size:4d} median |rel| {median:.2e} scatter {scatter:.2e} "
              f"max {worst:.2e} | all: median |rel| {np.median(rel_all):.2e}, >1e-3: "
              f"{int(np.count_nonzero(rel_all > 1e-3))} | NaN pattern changes {nan_changes}")
    ext_a, ext_b = joined["classification.extendedness"]
    print(f"extendedness flips: {int(np.count_nonzero(~((ext_a == ext_b) | (np.isnan(ext_a) & np.isnan(ext_b)))))}")
    changed = []
    for name in names:
        if name.startswith("multishapelet.") or name == "classification.extendedness":
            continue
        a, b = joined[name]
        if a.dtype.kind in "fc":
            same_nan = np.isnan(a) == np.isnan(b)
            finite = np.isfinite(a) & np.isfinite(b)
            rel = np.abs(b[finite] - a[finite]) / np.maximum(np.abs(a[finite]), 1e-300)
            worst = float(rel.max()) if rel.size else 0.0
            if worst > 0 or not same_nan.all():
                changed.append(f"{name}: max rel {worst:.2e}, NaN changes {int(np.count_nonzero(~same_nan))}")
        elif not np.array_equal(a, b):
            changed.append(f"{name}: {int(np.count_nonzero(a != b))} values differ")
    print("other columns: " + ("all identical" if not changed else "; ".join(changed)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_time = sub.add_parser("time")
    p_time.add_argument("--repeat", type=int, default=3)
    p_time.add_argument("--frames", type=int, default=10)
    p_time.add_argument("--json", type=Path, default=None)
    p_profile = sub.add_parser("profile")
    p_profile.add_argument("--frames", type=int, default=10)
    p_profile.add_argument("--capture", type=int, default=400, help="sources re-run with evaluation counting")
    p_compare = sub.add_parser("compare")
    p_compare.add_argument("before", type=Path)
    p_compare.add_argument("after", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    {"time": cmd_time, "profile": cmd_profile, "compare": cmd_compare}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
