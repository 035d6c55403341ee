"""Dask workers start ready: a plain `dask worker --preload processccd.worker_preload`, and a worker without it once
`DaskExecutor` has registered its plugin, hold the pipeline and its prepared kernels before their first frame."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest

pytestmark = pytest.mark.slow  # compiles the kernels if numba's cache lacks them
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module


def worker_state() -> tuple[bool, bool, list[str]]:
    """On a worker: whether worker_preload was imported, whether the kernels were prepared, and the kernels
    holding a specialisation."""
    import sys

    from processccd import compiled_kernels

    names = sorted({d.__name__ for d in compiled_kernels.dispatchers(entry_points_only=True) if d.signatures})
    return "processccd.worker_preload" in sys.modules, compiled_kernels._prepared, names


def entry_point_names() -> list[str]:
    from processccd.compiled_kernels import ENTRY_POINTS

    return sorted(name for names in ENTRY_POINTS.values() for name in names)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dask_worker_started_with_the_preload_has_the_kernels_before_any_frame(tmp_path: Path) -> None:
    from distributed import Client

    address = f"tcp://127.0.0.1:{free_port()}"
    dask = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
    log = (tmp_path / "dask.log").open("w")
    processes = [subprocess.Popen([*dask, "--host", "127.0.0.1", "--port", address.rsplit(":", 1)[1],
                                   "--no-dashboard"], stdout=log, stderr=log)]
    try:
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "1", "--nthreads", "1",
             "--host", "127.0.0.1", "--no-dashboard", "--preload", "processccd.worker_preload"],
            stdout=log, stderr=log, env={**os.environ, "PYTHONUNBUFFERED": "1"}))
        with Client(address, timeout=60) as client:
            deadline = time.monotonic() + 600
            while not client.scheduler_info()["workers"]:
                assert time.monotonic() < deadline, (tmp_path / "dask.log").read_text()[-3000:]
                time.sleep(1)
            states = list(client.run(worker_state).values())
    finally:
        for process in reversed(processes):
            process.terminate()
            process.wait(timeout=60)
        log.close()
    assert states == [(True, True, entry_point_names())]


def test_the_executor_prepares_plain_dask_workers_before_submitting_frames() -> None:
    from distributed import Client, LocalCluster

    from processccd.parallel import DaskExecutor

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster.scheduler_address) as client:
        assert [state[0] for state in client.run(worker_state).values()] == [False, False]
        executor = DaskExecutor(cluster.scheduler_address)
        try:
            states = list(client.run(worker_state).values())
        finally:
            executor.close()
    assert states == [(True, True, entry_point_names())] * 2
