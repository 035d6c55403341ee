"""Preloading the compiled kernels: the declared entry points exist, and after `load_cached_kernels` a frame
loads or compiles nothing more (so the forkserver's workers start with every kernel in memory)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from processccd.compiled_kernels import ENTRY_POINTS, dispatchers

FRAME_SCRIPT = """
import sys
from processccd.butler import Butler
from processccd.config import load_config
from processccd.parallel import make_jobs, run_frame
butler = Butler(sys.argv[1], sys.argv[2])
ids = butler.resolve({"run": [4192], "camcol": [4], "field": [300], "filter": ["u"]})
job = make_jobs(butler.input_root, butler.output_root, ids, load_config(), clobber_output=True)[0]
"""


def test_every_entry_point_is_a_kernel_of_its_module() -> None:
    found = {(d.py_func.__module__, d.__name__) for d in dispatchers(entry_points_only=True)}
    declared = {(module, name) for module, names in ENTRY_POINTS.items() for name in names}
    assert found == declared
    # the other kernels are called only from compiled code
    assert len(dispatchers()) > len(declared)


def test_importing_the_preload_module_outside_the_forkserver_keeps_the_normal_exit() -> None:
    """The teardown shortcut is for the forkserver only: elsewhere the exit status must survive."""
    result = subprocess.run([sys.executable, "-c", "import processccd.worker_preload as p, sys; "
                             "assert not p.imported_by_forkserver(); sys.exit(3)"], capture_output=True, text=True)
    assert result.returncode == 3, result.stderr


@pytest.mark.slow
def test_after_preloading_a_frame_loads_no_kernel(demo_dir: Path, tmp_path: Path) -> None:
    def run(script: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-c", FRAME_SCRIPT + script, str(demo_dir / "input"),
                                 str(tmp_path / "out")], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result

    # a first run puts every specialisation a frame needs in numba's cache (compiling if the code changed)
    run("assert run_frame(job).succeeded")
    second = run("""
from processccd.compiled_kernels import dispatchers, load_cached_kernels
assert load_cached_kernels() >= len(dispatchers(entry_points_only=True))
before = {d: len(d.signatures) for d in dispatchers()}
assert run_frame(job).succeeded
print(sorted(d.__name__ for d in dispatchers() if len(d.signatures) != before[d]))
""")
    assert second.stdout.strip() == "[]"
