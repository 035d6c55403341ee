"""Scale check (not a test): `--id run=R` expanded through a registry of 100,000 frames and by the directory scan.

Builds, under a temporary directory (deleted at the end), an input repository of `--frames` empty fpC files
laid out as the SDSS archive (`<run>/40/corr/<camcol>/fpC-...`, 6 camcols x 5 filters per field) and the
registry that lists the same frames, then times `Butler.resolve` of each expression with and without the
registry (CPU and wall seconds, best of `--repeat`). The page cache is warm: on a network filesystem the
directory walk costs far more, the registry query the same.

    python bench/registry_benchmark.py [--frames 100000] [--runs 20] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from processccd.butler import Butler
from processccd.dataid import FILTERS, DataId, parse_id_expression
from processccd.gen_registry import RawRow, write_registry
from processccd.registry import REGISTRY_FILE

FIRST_RUN = 1000


def synthetic_frames(n_frames: int, n_runs: int) -> list[DataId]:
    """`n_frames` frames over `n_runs` runs (rerun 40), every field with 6 camcols x 5 filters."""
    per_run = -(-n_frames // n_runs)
    frames = []
    for index in range(n_frames):
        run, within = divmod(index, per_run)
        field, rest = divmod(within, 30)
        camcol, filter_index = divmod(rest, 5)
        frames.append(DataId(run=FIRST_RUN + run, camcol=camcol + 1, field=11 + field,
                             filter=FILTERS[filter_index], rerun=40))
    return frames


def build(root: Path, frames: list[DataId]) -> tuple[Path, Path, float, float]:
    """The tree of empty files (no registry) and a copy of the same tree with a registry; creation times."""
    butler = Butler(root / "scan")
    start = time.perf_counter()
    made: set[Path] = set()
    for data_id in frames:
        path = butler.path("fpC", data_id)
        if path.parent not in made:
            path.parent.mkdir(parents=True, exist_ok=True)
            made.add(path.parent)
        path.touch()
    tree_seconds = time.perf_counter() - start
    with_registry = root / "registry"
    with_registry.mkdir()
    start = time.perf_counter()
    write_registry(with_registry / REGISTRY_FILE, (RawRow(d, "2005-01-01T00:00:00.000000000", "82N") for d in frames))
    registry_seconds = time.perf_counter() - start
    return root / "scan", with_registry, tree_seconds, registry_seconds


def time_resolve(repo: Path, expression: str, repeat: int) -> tuple[int, float, float, str]:
    """(ids found, best CPU s, best wall s, source) of expanding `expression` in `repo`."""
    values = parse_id_expression(expression)
    best_cpu = best_wall = float("inf")
    found = 0
    source = ""
    for _ in range(repeat):
        butler = Butler(repo)
        cpu, wall = time.process_time(), time.perf_counter()
        found = len(butler.resolve(values))
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
        source = butler.id_source.split()[0]
    return found, best_cpu, best_wall, source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    frames = synthetic_frames(args.frames, args.runs)
    run = FIRST_RUN + args.runs // 2
    expressions = [f"run={run}", f"run={run} filter=r camcol=3", "field=20 filter=g"]
    root = Path(tempfile.mkdtemp(prefix="registry-bench-"))
    try:
        scan_repo, registry_repo, tree_s, registry_s = build(root, frames)
        print(f"{len(frames)} frames in {args.runs} runs; load average {os.getloadavg()[0]:.2f}")
        print(f"made the tree of empty files in {tree_s:.1f} s, the registry "
              f"({(registry_repo / REGISTRY_FILE).stat().st_size / 1e6:.1f} MB) in {registry_s:.2f} s")
        print(f"{'expression':30s} {'source':10s} {'ids':>6s} {'CPU s':>9s} {'wall s':>9s}")
        for expression in expressions:
            for repo in (registry_repo, scan_repo):
                found, cpu, wall, source = time_resolve(repo, expression, args.repeat)
                print(f"{expression:30s} {source:10s} {found:6d} {cpu:9.4f} {wall:9.4f}")
        print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
