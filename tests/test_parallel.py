"""Executors: failures come back as summaries; serial, -j 2 and a Dask cluster write identical outputs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from processccd.dataid import DataId
from processccd.parallel import (
    STATUS_FAILED,
    FrameJob,
    ProcessPoolExecutor,
    SerialExecutor,
    make_executor,
    make_jobs,
    run_frame,
)
from processccd.tasks.process_ccd import ProcessCcdConfig

U_FRAMES = "run=4192^6377 filter=u camcol=4"


def _missing_input_jobs(tmp_path: Path, n: int) -> list[FrameJob]:
    (tmp_path / "input").mkdir(exist_ok=True)
    ids = [DataId(run=4192, camcol=4, field=300 + i, filter="u", rerun=40) for i in range(n)]
    return make_jobs(tmp_path / "input", tmp_path / "out", ids, ProcessCcdConfig())


def test_a_failing_frame_comes_back_as_a_summary_with_its_error(tmp_path):
    summary = run_frame(_missing_input_jobs(tmp_path, 1)[0])
    assert summary.status == STATUS_FAILED and not summary.succeeded
    assert summary.error_type == "InputError" and summary.exit_code == 3
    assert "fpC-004192-u4-0300.fit.gz" in summary.error and "\n" not in summary.error
    assert "Traceback" in summary.traceback
    assert summary.peak_rss_mb > 10 and summary.worker_pid == os.getpid()
    assert not (tmp_path / "out").exists()  # no metadata for a failed frame


def test_jobs_carry_the_config_as_plain_data_and_its_hash(tmp_path):
    import pickle

    jobs = _missing_input_jobs(tmp_path, 2)
    assert jobs[0].config["detection"]["threshold"] == 5.0
    assert jobs[0].config_hash == jobs[1].config_hash and len(jobs[0].config_hash) == 64
    assert pickle.loads(pickle.dumps(jobs[0])) == jobs[0]


def test_make_executor_chooses_serial_for_one_job_or_one_process():
    assert isinstance(make_executor(None, None, n_jobs=1), SerialExecutor)
    assert isinstance(make_executor(1, None, n_jobs=10), SerialExecutor)
    pool = make_executor(2, None, n_jobs=10)
    try:
        assert isinstance(pool, ProcessPoolExecutor) and pool.n_workers == 2
    finally:
        pool.close()


def test_serial_and_pool_executors_return_every_summary(tmp_path):
    jobs = _missing_input_jobs(tmp_path, 3)
    serial = list(SerialExecutor().run(jobs))
    pool = ProcessPoolExecutor(2)
    try:
        pooled = list(pool.run(jobs))
    finally:
        pool.close()
    assert sorted(s.data_id for s in serial) == sorted(s.data_id for s in pooled) == [j.data_id for j in jobs]
    assert {s.error for s in serial} == {s.error for s in pooled}
    assert {s.worker_pid for s in pooled} != {os.getpid()}


def _process_ccd(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from processccd.cli.process_ccd import main; main()", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def _products(output: Path) -> dict[str, bytes]:
    """Every product file but the per-frame metadata (which records timings and the worker's pid)."""
    return {p.relative_to(output).as_posix(): p.read_bytes() for p in sorted(output.rglob("*.fits"))}


@pytest.mark.slow
def test_serial_pool_and_dask_cluster_write_identical_outputs(demo_dir, tmp_path):
    from distributed import LocalCluster

    input_repo = str(demo_dir / "input")
    serial = _process_ccd(input_repo, "--id", U_FRAMES, "--output", str(tmp_path / "serial"), "-j", "1")
    assert serial.returncode == 0, serial.stderr
    pool = _process_ccd(input_repo, "--id", U_FRAMES, "--output", str(tmp_path / "pool"), "-j", "2")
    assert pool.returncode == 0, pool.stderr
    assert "processes executor (2 workers)" in pool.stderr
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        dask = _process_ccd(input_repo, "--id", U_FRAMES, "--output", str(tmp_path / "dask"),
                            "--scheduler", cluster.scheduler_address)
    assert dask.returncode == 0, dask.stderr
    assert "dask executor (2 workers)" in dask.stderr

    reference = _products(tmp_path / "serial")
    assert len(reference) >= 2 * 5  # calexp, background, psf, icSrc, src (+ icMatch) per frame
    assert _products(tmp_path / "pool") == reference
    assert _products(tmp_path / "dask") == reference
    for name in ("serial", "pool", "dask"):
        assert len(list((tmp_path / name).rglob("processCcd-*.yaml"))) == 2


def test_the_client_reads_the_config_without_numba() -> None:
    """numba (~0.3 s, ~120 MB) is imported by the compiled kernels on first use, not by the configuration."""
    code = ("import sys; import processccd.tasks.process_ccd; from processccd.config import load_config; "
            "load_config((), ()); print('numba' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_the_client_reads_the_config_without_astropy_or_scipy() -> None:
    """With worker processes, the client only reads the configuration: astropy and scipy (~0.6 CPU s of imports) are
    imported by the workers (their preload), where frames use them."""
    code = ("import sys; import processccd.tasks.process_ccd; from processccd.config import load_config; "
            "load_config((), ()); print(sorted(m for m in ('astropy', 'scipy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_one_blas_thread_per_process_is_a_default_that_a_user_value_overrides(monkeypatch) -> None:
    from processccd.parallel import BLAS_THREAD_VARIABLES, one_blas_thread_per_process

    for variable in BLAS_THREAD_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "4")
    one_blas_thread_per_process()
    assert os.environ["OMP_NUM_THREADS"] == "4"
    assert os.environ["OPENBLAS_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "1"
