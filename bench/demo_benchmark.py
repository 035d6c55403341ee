"""Demo benchmark (not a test): the whole demo as a user runs it, and SExtractor on the same frames.

    .venv/bin/python bench/demo_benchmark.py [--repeat 3] [--warmup 1] [--stage-repeat 1] [--json FILE]
                                             [--skip-stages] [--skip-sextractor]

1. CLI import time: `python -X importtime -c "import processccd.cli.process_ccd"` (cumulative time of that
   module) and the wall time of `process-ccd --help`, medians of 5 runs.
2. The demo, `process-ccd input --id run=4192 ... --id run=6377 ... --output TMP --clobber-output` then
   `export-results TMP`, as subprocesses, for each --jobs setting: "default" (process-ccd's own default, one
   worker process per core) and 1 (`-j 1`, everything in one process): --warmup runs, then --repeat timed runs.
   Per run: wall time, CPU time (user+sys of all descendants) and the peak RSS of the largest single process.
3. CPU seconds per frame of each stage, in-process, by bench/benchmark.py's `time_frame`.
4. When `source-extractor` is on the PATH: SExtractor 2.x on the same prepared frames (fpC - 1000, trimmed to
   2048x1361, float32 FITS, no weight map: SExtractor's own 512-px background RMS mesh, as LSST's single
   clipped stdev), LSST-like configuration bench/sextractor/lsst-like.sex, a normalised Gaussian filter of the
   frame's PSF width written per frame, the 10 frames serially, warm-up then --repeat passes. Two thresholds:
   "lsst" (5 x the noise of the *filtered* image, as LSST's 5 sigma: DETECT_THRESH = 5 sqrt(sum k^2)/sum k,
   used for the ratio) and "raw" (DETECT_THRESH 5: 5 x the RMS of the unfiltered image, much shallower).

Prints medians (the machine is shared: the load average at start and end is recorded) and writes JSON
(default bench/results/demo-<date>.json).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

# One BLAS thread, as process-ccd sets for its workers (and bench/benchmark.py's one-core figures): the in-process
# stage timings must not count idle BLAS threads spinning. Set before numpy is imported; a user's value wins.
# The timed commands run in the caller's environment, as a user would run them.
CALLER_ENVIRONMENT = dict(os.environ)
from processccd.parallel import one_blas_thread_per_process  # noqa: E402

one_blas_thread_per_process()

import numpy as np  # noqa: E402
from astropy.io import fits  # noqa: E402

from processccd import __version__  # noqa: E402
from processccd.butler import Butler  # noqa: E402
from processccd.dataid import DataId  # noqa: E402
from processccd.psf import SdssKLPsf, adaptive_gaussian_width  # noqa: E402
from processccd.tasks.make_exposure import make_exposure  # noqa: E402
from processccd.tasks.process_ccd import ProcessCcdTask  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
SEXTRACTOR_DIR = BENCH_DIR / "sextractor"
sys.path.insert(0, str(BENCH_DIR))
import benchmark  # noqa: E402  (bench/benchmark.py: per-stage timing, reused, not duplicated)

DEMO_IDS = ("run=4192 filter=u^g^r^i^z camcol=4 field=300", "run=6377 filter=u^g^r^i^z camcol=4 field=399")
FWHM_PER_SIGMA = 2.3548
LSST_THRESHOLD_SIGMAS = 5.0
PSF_SIGMA_POSITION = (1024.0, 680.0)


@dataclass
class ChildRun:
    """One successful subprocess: wall and CPU (user + sys) seconds, peak resident memory."""

    wall: float
    cpu: float
    peak_rss_mb: float


# Runs a command and reports its wall time, CPU (RUSAGE_CHILDREN after the wait) and peak RSS on the last line of
# stderr. A child forked straight from this (large) process would inherit its memory high-water mark through
# fork and exec, so every command is forked from this small launcher instead. The launcher is a child subreaper
# (Linux): worker processes that outlive their parent (the multiprocessing forkserver and its workers) are
# re-parented to it and reaped, so their CPU time and peak RSS count too (ru_maxrss: the largest single process).
LAUNCHER = """
import ctypes, os, resource, sys, time
PR_SET_CHILD_SUBREAPER = 36
ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
start = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status = os.waitpid(pid, 0)
wall = time.perf_counter() - start
while True:
    try:
        os.waitpid(-1, 0)
    except ChildProcessError:
        break
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
sys.stderr.write(f"\\n{MARKER} {wall} {usage.ru_utime + usage.ru_stime} {usage.ru_maxrss}\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""
MARKER = "demo-benchmark-child:"


def run_child(command: list[str], stdout_path: Path | None = None, cwd: Path = ROOT) -> ChildRun:
    """Run `command` through the launcher, stdout to `stdout_path` (or discarded); its wall, CPU and peak RSS."""
    launcher = [sys.executable, "-I", "-S", "-c", LAUNCHER.replace("{MARKER}", MARKER), *command]
    with open(stdout_path or os.devnull, "w") as stdout:
        result = subprocess.run(launcher, stdout=stdout, stderr=subprocess.PIPE, text=True, cwd=cwd,
                                env=CALLER_ENVIRONMENT)
    stderr = result.stderr.rstrip().splitlines()
    if result.returncode != 0 or not stderr or not stderr[-1].startswith(MARKER):
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n" + "\n".join(stderr[-20:]))
    wall, cpu, maxrss_kb = (float(v) for v in stderr[-1].removeprefix(MARKER).split())
    return ChildRun(wall=wall, cpu=cpu, peak_rss_mb=maxrss_kb / 1024)


def source_state() -> dict[str, object]:
    """The checkout measured: HEAD commit and the files modified in the working tree (read-only git)."""
    def git(*args: str) -> str:
        result = subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT)
        return result.stdout.rstrip() if result.returncode == 0 else ""

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "modified": [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]}


def default_input() -> Path:
    """The demo input repository: ./input of the checkout, else the shared copy."""
    local = ROOT / "input"
    return local if local.is_dir() else ROOT.parent / "shared" / "sdss-demo" / "input"


def tool(name: str) -> str:
    """The console script `name` installed beside this interpreter (else the one on the PATH)."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def parse_importtime(stderr: str, module: str) -> float:
    """Cumulative seconds of `module` in `python -X importtime` output ("import time: self | cumulative | name")."""
    for line in stderr.splitlines():
        fields = line.removeprefix("import time:").split("|")
        if len(fields) == 3 and fields[2].strip() == module:
            return int(fields[1]) / 1e6
    raise ValueError(f"{module} not in the -X importtime output")


def cli_import_time(runs: int = 5) -> dict[str, float]:
    """Median cumulative import time of processccd.cli.process_ccd and wall time of `process-ccd --help`."""
    module = "processccd.cli.process_ccd"
    import_seconds, help_seconds = [], []
    for _ in range(runs):
        result = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"],
                                capture_output=True, text=True, check=True, cwd=ROOT)
        import_seconds.append(parse_importtime(result.stderr, module))
        help_seconds.append(run_child([tool("process-ccd"), "--help"]).wall)
    return {"import_s": statistics.median(import_seconds), "help_wall_s": statistics.median(help_seconds)}


def demo_run(input_repo: Path, output: Path, jobs: str) -> dict[str, dict[str, float]]:
    """The demo commands once: process-ccd on the 10 frames (`-j jobs` unless "default"), then export-results."""
    command = [tool("process-ccd"), str(input_repo)]
    for expression in DEMO_IDS:
        command += ["--id", *expression.split()]
    command += ["--output", str(output), "--clobber-output"] + ([] if jobs == "default" else ["-j", jobs])
    process = run_child(command)
    listing = output.parent / "detected-sources.txt"
    export = run_child([tool("export-results"), str(output)], stdout_path=listing)
    n_lines = sum(1 for line in listing.open() if not line.startswith("#"))
    return {"process_ccd": asdict(process), "export_results": asdict(export),
            "total": {"wall": process.wall + export.wall, "cpu": process.cpu + export.cpu,
                      "peak_rss_mb": max(process.peak_rss_mb, export.peak_rss_mb), "sources": n_lines}}


def median_of(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per-field median over runs of {part: {field: value}}."""
    return {part: {key: statistics.median(run[part][key] for run in runs) for key in runs[0][part]}
            for part in runs[0]}


def stage_times(input_repo: Path, repeat: int) -> dict[str, dict]:
    """CPU seconds of each stage and measurement step of each demo frame (median of `repeat`), in-process."""
    with tempfile.TemporaryDirectory(prefix="demo-bench-stages-") as output:
        task = ProcessCcdTask(Butler(input_repo, output))
        benchmark.time_frame(task, benchmark.FRAMES[0])  # warm-up (imports, caches)
        results = {}
        for data_id in benchmark.FRAMES:
            runs = [benchmark.time_frame(task, data_id) for _ in range(repeat)]
            median = {key: statistics.median(run[key] for run in runs) for key in runs[0] if key != "n_src"}
            # bench/benchmark.py marks the measurement steps (parts of "measurement") by leading blanks
            results[data_id.label()] = {
                "n_src": int(runs[0]["n_src"]),
                "stages": {key: value for key, value in median.items() if not key.startswith(" ")},
                "measurement_steps": {key.strip(): value for key, value in median.items() if key.startswith(" ")}}
    return results


def gaussian_conv_kernel(sigma: float) -> np.ndarray:
    """A circular Gaussian of width `sigma` sampled at pixel centres, half-width ceil(3 sigma), peak 1."""
    half = int(np.ceil(3.0 * sigma))
    offsets = np.arange(-half, half + 1, dtype=np.float64)
    return np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2.0 * sigma**2))


def write_conv(path: Path, kernel: np.ndarray, comment: str) -> None:
    """An SExtractor filter file: `CONV NORM` (SExtractor rescales to unit sum), a comment, one row per line."""
    rows = "\n".join(" ".join(f"{value:.6f}" for value in row) for row in kernel)
    path.write_text(f"CONV NORM\n# {comment}\n{rows}\n")


def read_conv(path: Path) -> np.ndarray:
    """The kernel of an SExtractor filter file written by `write_conv`."""
    rows = [line.split() for line in path.read_text().splitlines()[1:] if line.strip() and not line.startswith("#")]
    return np.array(rows, dtype=np.float64)


def filtered_noise_factor(kernel: np.ndarray) -> float:
    """Noise of the image filtered by the unit-sum `kernel` over the noise of the image (white noise)."""
    return float(np.sqrt(np.sum(kernel**2)) / np.sum(kernel))


def frame_psf_sigma(butler: Butler, data_id: DataId) -> float:
    """Adaptive-moment Gaussian width of the psField PSF at the frame centre, as the detection stage uses."""
    psf = SdssKLPsf.from_file(butler.path("psField", data_id), data_id.filter)
    return adaptive_gaussian_width(psf.compute_image(*PSF_SIGMA_POSITION))


def sextractor_version(executable: str) -> str:
    """`source-extractor --version` first line."""
    return subprocess.run([executable, "--version"], capture_output=True, text=True).stdout.strip()


def prepare_sextractor_frames(input_repo: Path, workdir: Path) -> list[dict]:
    """Write each demo frame (fpC - 1000, trimmed, float32) and its PSF-width .conv filter into `workdir`."""
    butler = Butler(input_repo, workdir)
    frames = []
    for data_id in benchmark.FRAMES:
        name = f"{data_id.run}-{data_id.filter}{data_id.camcol}-{data_id.field:04d}"
        exposure = make_exposure(butler, data_id)
        image_path = workdir / f"{name}.fits"
        fits.PrimaryHDU(exposure.image.astype(np.float32)).writeto(image_path)
        sigma = frame_psf_sigma(butler, data_id)
        kernel = gaussian_conv_kernel(sigma)
        conv_path = workdir / f"{name}.conv"
        write_conv(conv_path, kernel, f"Gaussian sigma={sigma:.4f} px, FWHM={FWHM_PER_SIGMA * sigma:.4f} px, "
                                      f"{kernel.shape[1]}x{kernel.shape[0]}")
        frames.append({"label": data_id.label(), "image": image_path, "conv": conv_path, "psf_sigma": sigma,
                       "kernel_size": kernel.shape[0], "noise_factor": filtered_noise_factor(kernel),
                       "catalog": workdir / f"{name}.cat"})
    return frames


def sextractor_command(executable: str, frame: dict, detect_thresh: float) -> list[str]:
    """One SExtractor invocation on one prepared frame."""
    return [executable, str(frame["image"]), "-c", str(SEXTRACTOR_DIR / "lsst-like.sex"),
            "-PARAMETERS_NAME", str(SEXTRACTOR_DIR / "lsst-like.param"), "-FILTER_NAME", str(frame["conv"]),
            "-CATALOG_NAME", str(frame["catalog"]), "-DETECT_THRESH", f"{detect_thresh:.6g}",
            "-ANALYSIS_THRESH", f"{detect_thresh:.6g}"]


def read_ldac_catalog(path: Path) -> dict[str, float]:
    """Source count, background RMS and threshold (DN) of a FITS_LDAC catalogue."""
    with fits.open(path) as hdus:
        header = fits.Header([fits.Card.fromstring(card) for card in hdus["LDAC_IMHEAD"].data[0][0]])
        return {"sources": len(hdus["LDAC_OBJECTS"].data), "back_rms": float(header["SEXBKDEV"]),
                "threshold_dn": float(header["SEXTHLD"])}


def sextractor_benchmark(executable: str, frames: list[dict], mode: str, warmup: int, repeat: int) -> dict:
    """Time the 10 frames serially with the `mode` threshold ("lsst" or "raw"); per-frame counts."""
    thresholds = {f["label"]: LSST_THRESHOLD_SIGMAS * (f["noise_factor"] if mode == "lsst" else 1.0)
                  for f in frames}
    for _ in range(warmup):
        for frame in frames:
            run_child(sextractor_command(executable, frame, thresholds[frame["label"]]))
    passes = []
    for _ in range(repeat):
        runs = [run_child(sextractor_command(executable, f, thresholds[f["label"]])) for f in frames]
        passes.append({"wall": sum(r.wall for r in runs), "cpu": sum(r.cpu for r in runs),
                       "peak_rss_mb": max(r.peak_rss_mb for r in runs)})
    per_frame = {f["label"]: {"detect_thresh_sigmas": thresholds[f["label"]], **read_ldac_catalog(f["catalog"])}
                 for f in frames}
    return {"mode": mode, "passes": passes,
            "median": {key: statistics.median(p[key] for p in passes) for key in passes[0]},
            "frames": per_frame}


def print_report(results: dict) -> None:
    """Human-readable summary of `results`."""
    print(f"load average at start {results['load_average_start']}, at end {results['load_average_end']}")
    cli = results["cli"]
    print(f"CLI: import processccd.cli.process_ccd {cli['import_s']:.3f} s, process-ccd --help "
          f"{cli['help_wall_s']:.3f} s wall (medians)")
    for jobs, block in results["demo"].items():
        demo = block["median"]
        print(f"demo with jobs={jobs}, median of {len(block['runs'])} runs:")
        for part in ("process_ccd", "export_results", "total"):
            row = demo[part]
            print(f"  {part:<15} wall {row['wall']:7.2f} s  CPU {row['cpu']:7.2f} s  "
                  f"peak RSS {row['peak_rss_mb']:6.0f} MB")
        print(f"  sources listed: {int(demo['total']['sources'])}")
    stages = results.get("stages")
    if stages:
        print("CPU s per frame (mean of the 10 frames; in-process, bench/benchmark.py's time_frame):")
        for group in ("stages", "measurement_steps"):
            print(f"  {group.replace('_', ' ')}:")
            for key in next(iter(stages.values()))[group]:
                print(f"    {key:<32}{statistics.fmean(row[group][key] for row in stages.values()):8.3f}")
    for block in results.get("sextractor", {}).get("runs", []):
        median = block["median"]
        ratios = "; ".join(f"jobs={jobs}: wall {ratio['wall']:.2f}x CPU {ratio['cpu']:.2f}x"
                           for jobs, ratio in block["ratios"].items())
        print(f"SExtractor ({block['mode']} threshold), 10 frames serially, median of {len(block['passes'])}: "
              f"wall {median['wall']:.2f} s  CPU {median['cpu']:.2f} s  peak RSS {median['peak_rss_mb']:.0f} MB; "
              f"processccd/SExtractor {ratios}")
    if "sextractor" not in results:
        return
    runs = {block["mode"]: block["frames"] for block in results["sextractor"]["runs"]}
    print(f"{'frame':<12}{'sigma_psf':>10}{'processccd':>11}" + "".join(f"{'SEx ' + m:>10}{'T[DN]':>8}" for m in runs))
    for frame in results["sextractor"]["frames"]:
        label = frame["label"]
        n_pccd = stages[label]["n_src"] if stages else -1
        print(f"{label:<12}{frame['psf_sigma']:>10.3f}{n_pccd:>11}"
              + "".join(f"{runs[m][label]['sources']:>10}{runs[m][label]['threshold_dn']:>8.2f}" for m in runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=default_input(), help="demo input repository")
    parser.add_argument("--repeat", type=int, default=3, help="timed demo runs and SExtractor passes")
    parser.add_argument("--warmup", type=int, default=1, help="untimed demo runs / SExtractor passes first")
    parser.add_argument("--stage-repeat", type=int, default=1, help="in-process stage timings per frame")
    parser.add_argument("--jobs", action="append", default=None,
                        help="process-ccd -j setting to time, repeatable (default: 'default' and '1')")
    parser.add_argument("--skip-stages", action="store_true", help="no in-process per-stage timing")
    parser.add_argument("--skip-sextractor", action="store_true", help="no SExtractor comparison")
    parser.add_argument("--json", type=Path, default=BENCH_DIR / "results" / f"demo-{datetime.date.today()}.json")
    args = parser.parse_args()
    input_repo = args.input.resolve()
    results: dict = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "host": platform.node(),
                     "cpus": os.cpu_count(), "python": platform.python_version(), "processccd": __version__,
                     **source_state(),
                     "load_average_start": [round(v, 2) for v in os.getloadavg()],
                     "repeat": args.repeat, "warmup": args.warmup}
    results["cli"] = cli_import_time()
    results["demo"] = {}
    for jobs in args.jobs or ["default", "1"]:
        with tempfile.TemporaryDirectory(prefix="demo-bench-") as tmp:
            output = Path(tmp) / "TMP"
            for _ in range(args.warmup):
                demo_run(input_repo, output, jobs)
            runs = [demo_run(input_repo, output, jobs) for _ in range(args.repeat)]
        results["demo"][jobs] = {"runs": runs, "median": median_of(runs)}
    if not args.skip_stages:
        results["stages"] = stage_times(input_repo, args.stage_repeat)
    executable = shutil.which("source-extractor")
    if args.skip_sextractor:
        print("SExtractor comparison skipped (--skip-sextractor)")
    elif executable is None:
        print("source-extractor is not on the PATH: SExtractor comparison skipped "
              "(Debian: apt-get install source-extractor)")
    else:
        with tempfile.TemporaryDirectory(prefix="demo-bench-sex-") as workdir:
            frames = prepare_sextractor_frames(input_repo, Path(workdir))
            blocks = [sextractor_benchmark(executable, frames, mode, args.warmup, args.repeat)
                      for mode in ("lsst", "raw")]
        for block in blocks:
            block["ratios"] = {jobs: {"wall": demo["median"]["total"]["wall"] / block["median"]["wall"],
                                      "cpu": demo["median"]["total"]["cpu"] / block["median"]["cpu"]}
                               for jobs, demo in results["demo"].items()}
        results["sextractor"] = {"version": sextractor_version(executable), "weight": "none (background RMS mesh)",
                                 "frames": [{k: v for k, v in f.items() if k in ("label", "psf_sigma", "kernel_size",
                                                                                   "noise_factor")} for f in frames],
                                 "runs": blocks}
    results["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    print_report(results)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1))
    print(f"results written to {args.json}")


if __name__ == "__main__":
    sys.exit(main())
