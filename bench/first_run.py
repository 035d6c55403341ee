"""First-run benchmark (not a test): the demo's wall time right after an install (the compiled kernels' cache
empty) and once warm, for -j default, -j 1 and a 2-worker Dask cluster on 127.0.0.1, plus `--warm-up` alone.

    python bench/first_run.py --venv /tmp/fr-venv [--read-only] [--input DIR] [--modes default,1,dask]

`--venv` is a virtual environment with processccd installed (e.g. a plain `pip install`). Before each mode's
first run, the cache is emptied: the `*.nbi`/`*.nbc` files beside the installed kernel modules, or, with
`--read-only`, a fresh HOME (the package directory is made read-only, and as root the runs drop to user nobody
with setpriv, since root writes into read-only directories). Prints per mode: first and warm wall time, the
CPU time of the command and its descendants (with Dask, of the client and the cluster), the `compiling`
INFO lines the command printed (1 = compiled once; with Dask they go to the workers' log), and the target
first <= compile + 1.2 x warm, with the machine's load average. Under load, compare CPU rather than wall times.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEMO_IDS = ["--id", "run=4192 filter=u^g^r^i^z camcol=4 field=300",
            "--id", "run=6377 filter=u^g^r^i^z camcol=4 field=399"]
COMPILING = "compiling the measurement kernels once"
NOBODY = 65534


def load() -> str:
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def become_subreaper() -> None:
    """Have the processes a command leaves behind (the worker forkserver outlives process-ccd by a moment)
    re-parented to this one, so that their CPU time is counted once reaped (`reap_descendants`)."""
    import ctypes

    PR_SET_CHILD_SUBREAPER = 36
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap_descendants() -> None:
    """Wait for every remaining child (call only when no long-lived child, e.g. a Dask cluster, is running)."""
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


class Install:
    """The installed package of `venv`, its cache and how to run its commands."""

    def __init__(self, venv: Path, read_only: bool, scratch: Path) -> None:
        self.venv, self.read_only, self.scratch = venv, read_only, scratch
        self.package = Path(subprocess.check_output(
            [venv / "bin" / "python", "-c", "import importlib.util as u; "
             "print(u.find_spec('processccd').submodule_search_locations[0])"], text=True,
            env={**os.environ, "NUMBA_CACHE_DIR": ""}).strip())
        self.prefix: list[str] = []
        self.home = scratch / "home"
        if read_only:
            for path in [self.package, *self.package.rglob("*")]:
                path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
            if os.geteuid() == 0:
                self.prefix = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
                scratch.chmod(0o777)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
        env["HOME"] = str(self.home)
        env["PATH"] = f"{self.venv / 'bin'}:{env['PATH']}"
        return env

    def empty_cache(self) -> None:
        if self.read_only:
            shutil.rmtree(self.home, ignore_errors=True)
            self.home.mkdir()
            if self.prefix:
                os.chown(self.home, NOBODY, NOBODY)
        else:
            for pattern in ("*.nbi", "*.nbc", "processccd-kernels.lock"):
                for path in self.package.rglob(pattern):
                    path.unlink()
            self.home.mkdir(exist_ok=True)

    def command(self, *args: str) -> list[str]:
        return [*self.prefix, str(self.venv / "bin" / "process-ccd"), *args]

    def run(self, *args: str, reap: bool = True) -> tuple[float, float, int]:
        """Wall and CPU seconds of one command (with its descendants when `reap`), and the number of `compiling`
        lines it printed."""
        cpu = children_cpu()
        start = time.perf_counter()
        result = subprocess.run(self.command(*args), env=self.env(), capture_output=True, text=True)
        wall = time.perf_counter() - start
        if reap:
            reap_descendants()
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed:\n{result.stderr[-3000:]}")
        return wall, children_cpu() - cpu, result.stderr.count(COMPILING)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaskCluster:
    """`dask scheduler` and `dask worker --nworkers 2 --nthreads 1` on 127.0.0.1, run like the pipeline."""

    def __init__(self, install: Install) -> None:
        port = free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        dask = [*install.prefix, str(install.venv / "bin" / "dask")]
        log = open(install.scratch / "dask.log", "a")  # noqa: SIM115 - closed in close()
        self.log = log
        self.processes = [subprocess.Popen([*dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                            "--no-dashboard"], env=install.env(), stdout=log, stderr=log)]
        time.sleep(3)
        self.processes.append(subprocess.Popen([*dask, "worker", self.address, "--nworkers", "2", "--nthreads", "1",
                                                "--no-dashboard", "--host", "127.0.0.1"],
                                               env=install.env(), stdout=log, stderr=log))
        time.sleep(8)

    def cpu(self) -> float:
        """CPU seconds used so far by the scheduler, the nanny and its worker processes (live ones)."""
        import psutil

        total = 0.0
        for process in self.processes:
            for member in [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = member.cpu_times()
                    total += times.user + times.system
        return total

    def close(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
            process.wait(timeout=60)
        self.log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, required=True)
    parser.add_argument("--read-only", action="store_true")
    parser.add_argument("--input", type=Path, default=REPO_ROOT / "input")
    parser.add_argument("--modes", default="default,1,dask")
    parser.add_argument("--compile-seconds", type=float,
                        help="skip timing --warm-up on an empty cache and take this wall time for the bound")
    args = parser.parse_args()

    become_subreaper()
    scratch = Path(tempfile.mkdtemp(prefix="first-run-"))
    install = Install(args.venv, args.read_only, scratch)
    print(f"package {install.package} ({'read-only, cache in HOME' if args.read_only else 'cache beside it'})")
    if args.compile_seconds is None:
        install.empty_cache()
        compile_wall, compile_cpu, lines = install.run("--warm-up")
        print(f"--warm-up on an empty cache: {compile_wall:.1f} s wall, {compile_cpu:.1f} s CPU, {lines} compiling "
              f"line ({load()})", flush=True)
    else:
        compile_wall = args.compile_seconds
    output = scratch / "out"
    output.mkdir()
    if install.prefix:
        os.chown(output, NOBODY, NOBODY)
    print(f"{'-j':>8} {'first s':>8} {'CPU s':>8} {'comp':>4} {'warm s':>8} {'CPU s':>8} {'comp':>4} "
          f"{'bound s':>9}  met   load at start", flush=True)
    for mode in args.modes.split(","):
        install.empty_cache()
        cluster = DaskCluster(install) if mode == "dask" else None
        extra = ["--scheduler", cluster.address] if cluster else ([] if mode == "default" else ["-j", mode])
        try:
            before = load()
            runs = []
            for i in range(2):
                cluster_cpu = cluster.cpu() if cluster else 0.0
                wall, cpu, lines = install.run(str(args.input), *DEMO_IDS, "--output", str(output / f"{mode}-{i}"),
                                               *extra, reap=cluster is None)
                runs.append((wall, cpu + (cluster.cpu() - cluster_cpu if cluster else 0.0), lines))
        except RuntimeError as err:
            print(f"{mode:>8} failed: {err}", flush=True)
            continue
        finally:
            if cluster:
                cluster.close()
        (first, first_cpu, first_lines), (warm, warm_cpu, warm_lines) = runs
        bound = compile_wall + 1.2 * warm
        print(f"{mode:>8} {first:8.1f} {first_cpu:8.1f} {first_lines:4d} {warm:8.1f} {warm_cpu:8.1f} "
              f"{warm_lines:4d} {bound:9.1f}  {'yes' if first <= bound else 'NO'}   {before}", flush=True)
    print(f"(bound = --warm-up wall {compile_wall:.1f} s + 1.2 x warm; CPU = the command's and its descendants' "
          f"(forkserver, workers), for Dask the client's and the cluster's; {load()} at the end)")
    for path in scratch.rglob("*"):
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
