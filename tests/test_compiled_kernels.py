"""Preparing the compiled kernels: the declared entry points exist and have warm-up arguments, and after
`prepare_kernels` a frame loads or compiles nothing more (so the forkserver's workers start with every kernel in
memory, and `process-ccd --warm-up` fills the cache with what real runs use)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from processccd.compiled_kernels import ENTRY_POINTS, dispatchers, warm_up_arguments

FRAME_SCRIPT = """
import sys
from processccd.butler import Butler
from processccd.config import load_config
from processccd.parallel import make_jobs, run_frame
butler = Butler(sys.argv[1], sys.argv[2])
ids = butler.resolve({"run": [4192], "camcol": [4], "field": [300], "filter": [sys.argv[3]]})
job = make_jobs(butler.input_root, butler.output_root, ids, load_config(sys.argv[4:]), clobber_output=True)[0]
"""
PROFILE = Path(__file__).resolve().parents[1] / "configs" / "processCcd-lsst2020.yaml"


def test_every_entry_point_is_a_kernel_of_its_module() -> None:
    found = {(d.py_func.__module__, d.__name__) for d in dispatchers(entry_points_only=True)}
    declared = {(module, name) for module, names in ENTRY_POINTS.items() for name in names}
    assert found == declared
    # the other kernels are called only from compiled code
    assert len(dispatchers()) > len(declared)


def test_every_entry_point_has_warm_up_arguments_of_its_arity() -> None:
    import inspect

    arguments = warm_up_arguments()
    assert set(arguments) == {name for names in ENTRY_POINTS.values() for name in names}
    for dispatcher in dispatchers(entry_points_only=True):
        n_parameters = len(inspect.signature(dispatcher.py_func).parameters)
        assert arguments[dispatcher.__name__], dispatcher.__name__
        assert all(len(values) == n_parameters for values in arguments[dispatcher.__name__]), dispatcher.__name__


def test_importing_the_preload_module_outside_the_forkserver_keeps_the_normal_exit() -> None:
    """The teardown shortcut is for the forkserver only: elsewhere the exit status must survive."""
    result = subprocess.run([sys.executable, "-c", "import processccd.worker_preload as p, sys; "
                             "assert not p.imported_by_forkserver(); sys.exit(3)"], capture_output=True, text=True)
    assert result.returncode == 3, result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(("band", "config_files"), [("u", []), ("g", [str(PROFILE)])], ids=["default", "lsst2020"])
def test_after_preparing_the_kernels_a_frame_adds_no_specialisation(demo_dir: Path, tmp_path: Path, band: str,
                                                                    config_files: list[str]) -> None:
    def run(script: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-c", FRAME_SCRIPT + script, str(demo_dir / "input"),
                                 str(tmp_path / "out"), band, *config_files], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        return result

    # the warm-up's specialisations are those of a frame: after preparing them, the frame adds none (it would
    # load or compile it on its first call), in any kernel, entry point or not
    result = run("""
from processccd.compiled_kernels import dispatchers, kernel_signatures, prepare_kernels
report = prepare_kernels()
assert report.loaded + report.compiled == len(kernel_signatures())
before = {d: len(d.signatures) for d in dispatchers()}
assert run_frame(job).succeeded
print(sorted(d.__name__ for d in dispatchers() if len(d.signatures) != before[d]))
""")
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_a_cold_cache_is_compiled_once_before_the_pool_forks_its_workers(demo_dir: Path, tmp_path: Path) -> None:
    """With an empty cache, `process-ccd -j 2` compiles in the forkserver (one INFO line) and its two workers
    compile nothing (numba logs each compiled specialisation it saves: none twice), then a run compiles nothing."""
    from collections import Counter

    from processccd.compiled_kernels import COMPILING_MESSAGE
    from test_kernel_cache import saved_files

    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "NUMBA_DEBUG_CACHE": "1"}
    command = [sys.executable, "-c", "from processccd.cli.process_ccd import main; main()", str(demo_dir / "input"),
               "--id", "run=4192 filter=u^g camcol=4 field=300", "-j", "2", "--output"]
    cold = subprocess.run([*command, str(tmp_path / "cold")], env=env, capture_output=True, text=True)
    assert cold.returncode == 0, cold.stderr[-3000:]
    assert cold.stderr.count(COMPILING_MESSAGE) == 1
    saved = Counter(saved_files(cold.stdout))
    assert saved and max(saved.values()) == 1
    assert len(saved) >= len(warm_up_arguments())

    warm = subprocess.run([*command, str(tmp_path / "warm")], env=env, capture_output=True, text=True)
    assert warm.returncode == 0, warm.stderr[-3000:]
    assert COMPILING_MESSAGE not in warm.stderr
    assert saved_files(warm.stdout) == []


@pytest.mark.slow
def test_after_the_worker_preload_a_frame_imports_no_module(demo_dir: Path, tmp_path: Path) -> None:
    """The forkserver imports what a frame needs once: its workers import nothing more."""
    script = ("import sys\nimport processccd.worker_preload\nbefore = set(sys.modules)\n" + FRAME_SCRIPT
              + "assert run_frame(job).succeeded\nprint(sorted(set(sys.modules) - before))\n")
    result = subprocess.run([sys.executable, "-c", script, str(demo_dir / "input"), str(tmp_path / "out"), "u"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
