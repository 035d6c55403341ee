"""Scaling benchmark (not a test): the demo frames with -j 1, -j 2 and a 2-worker local Dask cluster.

Workers are started (and processccd imported in them) before the clock starts. Prints, per executor:
wall time, frames/s, speed-up over -j 1, CPU seconds per frame, and the peak resident memory of each
worker after its first and after its last frame (equal when memory does not grow with the number of
frames). Every executor writes into a fresh output repository (nothing is skipped).

    python bench/scaling.py [--input DIR] [--id 'run=4192^6377 filter=u^g^r^i^z camcol=4'] [--repeat 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from processccd.parallel import one_blas_thread_per_process

one_blas_thread_per_process()  # as process-ccd does, before numpy is imported (the executors are called directly)

from processccd.butler import Butler  # noqa: E402
from processccd.config import load_config  # noqa: E402
from processccd.dataid import parse_id_expression  # noqa: E402
from processccd.parallel import DaskExecutor, ProcessPoolExecutor, SerialExecutor, make_jobs  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ID = "run=4192^6377 filter=u^g^r^i^z camcol=4"


def default_input() -> Path:
    local = REPO_ROOT / "input"
    return local if local.is_dir() else REPO_ROOT.parent / "shared" / "sdss-demo" / "input"


def run_once(name: str, executor, input_repo: Path, data_ids: list, config) -> dict:
    """Process every data id once on `executor`; wall time and per-worker memory."""
    with tempfile.TemporaryDirectory(prefix=f"scaling-{name}-") as output:
        jobs = make_jobs(input_repo, Path(output), data_ids, config, log_level=30)
        start = time.perf_counter()
        summaries = list(executor.run(jobs))
        wall = time.perf_counter() - start
    failed = [s for s in summaries if not s.succeeded]
    if failed:
        raise SystemExit(f"{name}: {len(failed)} frames failed, e.g. {failed[0].data_id}: {failed[0].error}")
    by_worker: dict[int, list[float]] = defaultdict(list)
    for summary in summaries:
        by_worker[summary.worker_pid].append(summary.peak_rss_mb)
    return {"wall": wall, "frames": len(summaries), "task": sum(s.seconds for s in summaries),
            "cpu": sum(s.cpu_seconds for s in summaries),
            "memory": {pid: (min(values), max(values), len(values)) for pid, values in by_worker.items()}}


def warm_up(executor, config) -> None:
    """Start the workers and import processccd in them: two cheap jobs that fail (no input repository)."""
    from processccd.dataid import DataId

    with tempfile.TemporaryDirectory(prefix="scaling-warm-up-") as root:
        ids = [DataId(run=1, camcol=1, field=field, filter="u", rerun=1) for field in (1, 2)]
        list(executor.run(make_jobs(Path(root) / "absent", Path(root) / "out", ids, config)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", type=Path, default=default_input())
    parser.add_argument("--id", default=DEFAULT_ID)
    args = parser.parse_args()

    butler = Butler(args.input)
    data_ids = butler.resolve(parse_id_expression(args.id))
    config = load_config()
    print(f"{len(data_ids)} frames from {args.input}")

    results = {}
    results["-j 1"] = run_once("serial", SerialExecutor(), args.input, data_ids, config)
    pool = ProcessPoolExecutor(2, log_level=30)
    try:
        warm_up(pool, config)
        results["-j 2"] = run_once("pool", pool, args.input, data_ids, config)
    finally:
        pool.close()
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        dask = DaskExecutor(cluster.scheduler_address)
        try:
            warm_up(dask, config)
            results["dask 2 workers"] = run_once("dask", dask, args.input, data_ids, config)
        finally:
            dask.close()

    base = results["-j 1"]["wall"]
    print(f"{'executor':<16}{'wall [s]':>10}{'frames/s':>10}{'speed-up':>10}{'task s/frame':>14}"
          f"{'CPU s/frame':>13}   peak RSS per worker [MiB]: after first frame -> after last (frames)")
    for name, result in results.items():
        memory = ", ".join(f"{lo:.0f}->{hi:.0f} ({n})" for lo, hi, n in result["memory"].values())
        print(f"{name:<16}{result['wall']:>10.2f}{result['frames'] / result['wall']:>10.3f}"
              f"{base / result['wall']:>10.2f}{result['task'] / result['frames']:>14.2f}"
              f"{result['cpu'] / result['frames']:>13.2f}   {memory}")


if __name__ == "__main__":
    main()
