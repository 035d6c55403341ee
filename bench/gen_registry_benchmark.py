"""gen-registry speed (not a test): seconds per 1,000 frames, on synthetic fpC files.

Each synthetic fpC is a gzip file holding the primary header of a demo fpC (input/, when present; else a
header of the same size) with its DATE-OBS and TAIHMS varied, followed by `--data-kb` of incompressible
bytes standing for the start of the pixels (gen-registry reads only as far as the END card, so the rest of a
1.6 MB file is never read). Times a full build (every header read) and an `update=True` rebuild (no header
read), in CPU and wall seconds, under a temporary directory deleted at the end.

    python bench/gen_registry_benchmark.py [--frames 5000] [--data-kb 64]
"""

from __future__ import annotations

import argparse
import gzip
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

from processccd.butler import Butler
from processccd.dataid import FILTERS, DataId
from processccd.gen_registry import gen_registry

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_FPC = REPO_ROOT / "input/4192/40/corr/4/fpC-004192-r4-0300.fit.gz"


def demo_header() -> bytes:
    """The primary header (whole 2880-byte blocks) of a demo fpC, or synthetic cards of the same size."""
    if DEMO_FPC.is_file():
        with gzip.open(DEMO_FPC) as stream:
            raw = stream.read(5 * 2880)
        for start in range(0, len(raw), 80):
            if raw[start:start + 8] == b"END     ":
                return raw[:-(-(start + 80) // 2880) * 2880]
    cards = [f"KEY{i:05d}= {i:20d} / synthetic card".ljust(80) for i in range(100)]
    cards += ["DATE-OBS= '2003-10-19'".ljust(80), "TAIHMS  = '04:43:34.68'".ljust(80), "STRIPE  =  82".ljust(80),
              "STRIP   = 'S       '".ljust(80), "END".ljust(80)]
    text = "".join(cards).encode()
    return text + b" " * (-len(text) % 2880)


def write_frames(repo: Path, n_frames: int, data_kb: int) -> None:
    header = demo_header()
    rng = random.Random(1)
    data = rng.randbytes(data_kb * 1024)
    butler = Butler(repo)
    for index in range(n_frames):
        field, rest = divmod(index, 30)
        camcol, filter_index = divmod(rest, 5)
        data_id = DataId(run=5000, camcol=camcol + 1, field=11 + field, filter=FILTERS[filter_index], rerun=40)
        seconds = f"{(index * 7.31) % 60:05.2f}"
        varied = header.replace(b"'04:43:34.68'", f"'05:{index % 60:02d}:{seconds}'".encode())
        path = butler.path("fpC", data_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(varied + data, compresslevel=1))


def timed(repo: Path, update: bool) -> tuple[float, float, int, int]:
    cpu, wall = time.process_time(), time.perf_counter()
    result = gen_registry(repo, update=update)
    assert not result.errors, result.errors[:3]
    return time.process_time() - cpu, time.perf_counter() - wall, result.frames, result.headers_read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=5000)
    parser.add_argument("--data-kb", type=int, default=64)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gen-registry-bench-"))
    try:
        repo = root / "input"
        write_frames(repo, args.frames, args.data_kb)
        print(f"{args.frames} synthetic fpC files ({len(demo_header())} header bytes, {args.data_kb} kB data each);"
              f" load average {os.getloadavg()[0]:.2f}")
        for label, update in (("full build", False), ("full build again", False), ("update (no header read)", True)):
            cpu, wall, frames, read = timed(repo, update)
            print(f"{label:24s} {frames} frames, {read} headers read: {cpu:.2f} CPU s, {wall:.2f} wall s "
                  f"= {1000 * cpu / frames:.3f} CPU s, {1000 * wall / frames:.3f} wall s per 1000 frames")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
