"""Where the compiled kernels are cached: beside the sources when writable, else a user cache directory (the
decision, with a stand-in for os.access), and a read-only copy of the package run end to end."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest

import processccd
from processccd.compiled_kernels import COMPILING_MESSAGE
from processccd.kernel_cache import CACHE_VARIABLE, in_tree_writable, kernel_cache_dir, user_cache_dir

NOBODY = 65534


def access_except(*unwritable: Path):
    """An os.access stand-in: every path writable but `unwritable` (and what lies under them)."""
    def access(path: str, mode: int) -> bool:
        return not any(Path(path) == p or p in Path(path).parents for p in unwritable)
    return access


def package(tmp_path: Path, with_pycache: bool = True) -> list[Path]:
    dirs = [tmp_path / "processccd", tmp_path / "processccd" / "meas"]
    for directory in dirs:
        (directory / "__pycache__" if with_pycache else directory).mkdir(parents=True)
    return dirs


def test_a_writable_package_keeps_numbas_in_tree_cache(tmp_path: Path) -> None:
    dirs = package(tmp_path)
    environ = {"HOME": str(tmp_path / "home")}
    assert in_tree_writable(dirs, access_except())
    assert kernel_cache_dir(environ, dirs, access_except()) is None


def test_a_read_only_package_caches_in_the_user_cache_dir(tmp_path: Path) -> None:
    dirs = package(tmp_path)
    read_only = access_except(tmp_path / "processccd")
    home = tmp_path / "home"
    assert not in_tree_writable(dirs, read_only)
    assert kernel_cache_dir({"HOME": str(home)}, dirs, read_only) == home / ".cache" / "processccd"
    xdg = tmp_path / "xdg"
    assert kernel_cache_dir({"HOME": str(home), "XDG_CACHE_HOME": str(xdg)}, dirs, read_only) == xdg / "processccd"
    # a relative XDG_CACHE_HOME is invalid by the XDG spec: ignored
    assert user_cache_dir({"HOME": str(home), "XDG_CACHE_HOME": "rel"}) == home / ".cache" / "processccd"


def test_one_unwritable_kernel_directory_is_enough(tmp_path: Path) -> None:
    dirs = package(tmp_path)
    assert kernel_cache_dir({"HOME": str(tmp_path)}, dirs, access_except(dirs[1] / "__pycache__")) is not None


def test_a_missing_pycache_is_writable_if_it_can_be_created(tmp_path: Path) -> None:
    dirs = package(tmp_path, with_pycache=False)
    assert in_tree_writable(dirs, access_except())
    assert not in_tree_writable(dirs, access_except(dirs[0]))


def test_the_users_numba_cache_dir_wins(tmp_path: Path) -> None:
    dirs = package(tmp_path)
    environ = {"HOME": str(tmp_path / "home"), CACHE_VARIABLE: str(tmp_path / "mine")}
    assert kernel_cache_dir(environ, dirs, access_except(tmp_path)) is None


def test_an_unwritable_home_falls_back_to_a_temporary_dir(tmp_path: Path) -> None:
    dirs = package(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    chosen = kernel_cache_dir({"HOME": str(home)}, dirs, access_except(tmp_path / "processccd", home))
    assert chosen == Path(tempfile.gettempdir()) / f"processccd-{os.getuid()}"


def saved_files(output: str) -> list[str]:
    """The cache files numba wrote (NUMBA_DEBUG_CACHE=1 prints on stdout): one `data saved` line per compiled
    specialisation."""
    return re.findall(r"\[cache\] data saved to '([^']+)'", output)


@pytest.mark.slow
def test_a_read_only_install_compiles_once_into_the_user_cache_then_loads() -> None:
    """A read-only copy of the package; two `process-ccd --warm-up` started together compile once (one of them
    waits for the other's compile_lock, then loads), into $XDG_CACHE_HOME/processccd; a third run compiles nothing.

    As root, write permissions do not stop writes, so the runs drop to user `nobody` (setpriv) when run as root."""
    root = Path(tempfile.mkdtemp(prefix="processccd-read-only-"))
    try:
        site, cache, home = root / "site", root / "cache", root / "home"
        shutil.copytree(Path(processccd.__file__).parent, site / "processccd",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for directory in (cache, home):
            directory.mkdir()
        prefix: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("setpriv") is None:
                pytest.skip("running as root without setpriv: a read-only directory would be written")
            prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
            os.chmod(root, 0o755)
            for directory in (cache, home):
                os.chown(directory, NOBODY, NOBODY)
        for path in (site / "processccd").rglob("*"):
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        env = {key: value for key, value in os.environ.items() if key != CACHE_VARIABLE}
        env.update(PYTHONPATH=str(site), XDG_CACHE_HOME=str(cache), HOME=str(home), NUMBA_DEBUG_CACHE="1")
        command = [*prefix, sys.executable, "-c", "import sys; from processccd.cli.process_ccd import main; "
                   "assert sys.modules['processccd'].__file__.startswith(sys.argv.pop(1)); main()", str(site),
                   "--warm-up"]

        first = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for _ in range(2)]
        outputs = [process.communicate(timeout=900) for process in first]
        for process, (_, stderr) in zip(first, outputs, strict=True):
            assert process.returncode == 0, stderr[-3000:]
        stderrs = [stderr for _, stderr in outputs]
        assert sum(COMPILING_MESSAGE in stderr for stderr in stderrs) == 1
        saved = Counter(path for stdout, _ in outputs for path in saved_files(stdout))
        assert saved, "nothing was compiled"
        assert max(saved.values()) == 1, "a specialisation was compiled twice"
        assert all(Path(path).is_relative_to(cache / "processccd") for path in saved)
        assert any(" 0 compiled," in stderr for stderr in stderrs)  # the one that waited loaded them

        third = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        assert third.returncode == 0, third.stderr[-3000:]
        assert COMPILING_MESSAGE not in third.stderr
        assert saved_files(third.stdout) == []
        assert " 0 compiled," in third.stderr and str(cache / "processccd") in third.stderr
    finally:
        for path in root.rglob("*"):
            if path.is_dir():
                path.chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)
