"""Executors for one independent job per data id: in-process, a local process pool, or a Dask cluster.

A job (`FrameJob`) is small and picklable: repository paths, the data id and the config as a dict.
The worker (`run_frame`) builds its own Butler and ProcessCcdTask, reads its inputs and writes its
outputs directly (shared filesystem), writes the frame's metadata last, and returns a small
`FrameSummary`. The client only collects summaries, so whichever executor ran a job the outputs are
the same files.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import time
import traceback
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from processccd import __version__
from processccd.dataid import DataId
from processccd.logs import configure_task_logging

log = logging.getLogger("processCcd")

# Products a successful frame must hold for a rerun to skip it (helper datasets such as icMatch and
# apCorr are recorded in the metadata when present and then required too).
REQUIRED_OUTPUTS = ("calexp", "calexpBackground", "psf", "icSrc", "src")
OPTIONAL_OUTPUTS = ("icMatch", "apCorr")
STATUS_OK, STATUS_SKIPPED, STATUS_FAILED = "ok", "skipped", "failed"


@dataclass(frozen=True)
class FrameJob:
    """Everything a worker needs to process one frame (small and picklable)."""

    input_root: str
    output_root: str
    data_id: DataId
    config: dict[str, Any]  # ProcessCcdConfig as plain data (processccd.config.config_to_dict)
    config_hash: str
    clobber_output: bool = False
    qa: bool = False
    log_level: int = logging.INFO


@dataclass
class FrameSummary:
    """What a worker sends back: the ProcessCcdResult fields, a status and, on failure, the error."""

    data_id: DataId
    status: str  # "ok", "skipped" (complete from an earlier run) or "failed"
    n_icsrc: int | None = None
    n_src: int | None = None
    n_matches: int | None = None
    zero_point: float | None = None
    ap_corr_central: float | None = None
    seconds: float | None = None
    cpu_seconds: float | None = None  # CPU time of the worker process on this job (run, checksums, QA)
    error: str | None = None  # one line
    error_type: str | None = None
    exit_code: int = 0
    traceback: str | None = None
    worker_pid: int = 0
    peak_rss_mb: float = 0.0  # peak resident memory of the worker process so far
    qa_png: str | None = None  # relative to the output repository

    @property
    def succeeded(self) -> bool:
        return self.status in (STATUS_OK, STATUS_SKIPPED)


# --- the worker side -----------------------------------------------------------------------
def run_frame(job: FrameJob) -> FrameSummary:
    """Process one frame (or skip it when an earlier run completed it with the same config).

    Never raises for a failing frame: the error comes back in the summary.
    """
    from processccd.butler import Butler

    butler = Butler(job.input_root, job.output_root)
    start = time.perf_counter()
    cpu_start = time.process_time()
    try:
        summary = _completed_summary(butler, job)
        if summary is None:
            summary = _process(butler, job)
        if job.qa:
            summary.qa_png = _quick_look(butler, job.data_id)
    except KeyboardInterrupt:
        raise
    except Exception as err:  # a failing frame (or a bug) must not stop the others
        from processccd.errors import ProcessCcdError

        expected = isinstance(err, ProcessCcdError)
        message = " ".join(str(err).split()) if expected else f"unexpected {type(err).__name__}: {err}"
        summary = FrameSummary(job.data_id, STATUS_FAILED, seconds=time.perf_counter() - start,
                               error=message, error_type=type(err).__name__,
                               exit_code=getattr(err, "exit_code", 1), traceback=traceback.format_exc())
    summary.cpu_seconds = time.process_time() - cpu_start
    summary.worker_pid = os.getpid()
    summary.peak_rss_mb = peak_rss_mb()
    return summary


def _process(butler: Any, job: FrameJob) -> FrameSummary:
    from processccd.compiled_kernels import prepare_kernels_once
    from processccd.config import config_from_dict
    from processccd.tasks.process_ccd import ProcessCcdConfig, ProcessCcdTask

    # a no-op where the forkserver or a Dask worker preload prepared them; else (-j 1, a plain Dask worker) the
    # kernels are loaded, or compiled once under a lock shared with the other processes, before the first frame
    prepare_kernels_once()
    started = time.time()
    config = config_from_dict(ProcessCcdConfig, job.config)
    result = ProcessCcdTask(butler, config).run(job.data_id)
    checksum_start = time.perf_counter()
    checksums = butler.input_checksums(job.data_id)
    summary = FrameSummary(job.data_id, STATUS_OK, n_icsrc=result.n_icsrc, n_src=result.n_src,
                           n_matches=result.n_matches, zero_point=result.zero_point,
                           ap_corr_central=result.ap_corr_central, seconds=result.seconds)
    # the products this run wrote (config output.products): a resumed run checks exactly these
    outputs = [name for name in REQUIRED_OUTPUTS + OPTIONAL_OUTPUTS
               if name in config.output.products and butler.exists(name, job.data_id)]
    butler.write_metadata(job.data_id, {
        "status": "success",
        "processccd_version": __version__,
        "config_hash": job.config_hash,
        "data_id": job.data_id.as_dict(),
        "inputs_md5": checksums,
        "outputs": outputs,
        "result": {key: _plain(value) for key, value in asdict(summary).items() if key in RESULT_KEYS},
        "timings": {"process_seconds": round(result.seconds, 3),
                    "checksum_seconds": round(time.perf_counter() - checksum_start, 3),
                    "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                    "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
        "host": os.uname().nodename,
        "pid": os.getpid(),
    })
    return summary


RESULT_KEYS = ("n_icsrc", "n_src", "n_matches", "zero_point", "ap_corr_central", "seconds")


def _plain(value: Any) -> Any:
    """numpy scalars -> Python scalars, so that the metadata YAML stays safe_load-able."""
    return value.item() if hasattr(value, "item") else value


def _completed_summary(butler: Any, job: FrameJob) -> FrameSummary | None:
    """The stored summary if the frame is complete with this config and these inputs, else None."""
    if job.clobber_output:
        return None
    record = butler.read_metadata(job.data_id)
    if not record or record.get("status") != "success" or record.get("config_hash") != job.config_hash:
        return None
    outputs = record.get("outputs")
    if outputs is None:  # a record from before output.products
        outputs = REQUIRED_OUTPUTS
    if not all(butler.exists(name, job.data_id) for name in outputs):
        return None
    if record.get("inputs_md5") != butler.input_checksums(job.data_id):
        return None
    stored = record.get("result") or {}
    return FrameSummary(job.data_id, STATUS_SKIPPED, **{k: stored.get(k) for k in RESULT_KEYS})


def _quick_look(butler: Any, data_id: DataId) -> str | None:
    from processccd.qa import qa_png_path, write_frame_qa

    path = qa_png_path(butler.output_root, data_id)
    if not path.is_file():
        if not butler.exists("calexp", data_id):
            log.warning("%s: no quick-look image (the calexp was not written: config output.products)",
                        data_id.label())
            return None
        write_frame_qa(butler, data_id, path)
    return path.relative_to(butler.output_root).as_posix()


def peak_rss_mb() -> float:
    """Peak resident set size of this process [MiB] (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _init_worker(log_level: int) -> None:
    """Process-pool worker set-up: ignore SIGINT (the client stops cleanly), log like the client."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_task_logging(log_level)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)


# --- the client side -----------------------------------------------------------------------
class Executor(Protocol):
    """Runs jobs and yields their summaries as they complete (in any order)."""

    name: str

    def run(self, jobs: list[FrameJob]) -> Iterator[FrameSummary]: ...

    def cancel(self) -> None:
        """Drop the jobs not yet started; running ones finish (their outputs are atomic)."""

    def close(self) -> None: ...


class SerialExecutor:
    """`-j 1`: every job in this process, one after the other."""

    name = "serial"

    def __init__(self) -> None:
        self._cancelled = False

    def run(self, jobs: list[FrameJob]) -> Iterator[FrameSummary]:
        for job in jobs:
            if self._cancelled:
                return
            yield run_frame(job)

    def cancel(self) -> None:
        self._cancelled = True

    def close(self) -> None:
        self._cancelled = True


FORKSERVER_PRELOAD = ["processccd.worker_preload"]
BLAS_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def one_blas_thread_per_process() -> None:
    """Default the BLAS/OpenMP thread counts of this process and the processes it starts to 1 (a user's value
    wins): one process per core does the parallel work, and BLAS threads inside each would only oversubscribe
    the cores (the pipeline's matrix products are small). Effective in a process that has not imported numpy
    yet, and in every process started after the call (the forkserver and its workers, Dask workers)."""
    for variable in BLAS_THREAD_VARIABLES:
        os.environ.setdefault(variable, "1")


def start_worker_server() -> None:
    """Start the multiprocessing forkserver that `ProcessPoolExecutor` forks its workers from, with the pipeline
    imported and the compiled kernels loaded in it (`worker_preload`), once for all workers. Called early by
    the client, the server's start-up (about 1.5 s) overlaps the client's own instead of following it."""
    import multiprocessing
    from multiprocessing import forkserver

    one_blas_thread_per_process()  # before the server imports numpy
    multiprocessing.get_context("forkserver").set_forkserver_preload(FORKSERVER_PRELOAD)
    forkserver.ensure_running()


class ProcessPoolExecutor:
    """`-j N`: a pool of N local worker processes (forkserver start, processccd preloaded)."""

    name = "processes"

    def __init__(self, n_workers: int, log_level: int = logging.INFO) -> None:
        import concurrent.futures
        import multiprocessing

        start_worker_server()  # a no-op when the client started it already
        self.n_workers = n_workers
        self._pool = concurrent.futures.ProcessPoolExecutor(max_workers=n_workers,
                                                            mp_context=multiprocessing.get_context("forkserver"),
                                                            initializer=_init_worker, initargs=(log_level,))
        self._futures: list[Any] = []

    def run(self, jobs: list[FrameJob]) -> Iterator[FrameSummary]:
        import concurrent.futures

        job_of = {self._pool.submit(run_frame, job): job for job in jobs}
        self._futures = list(job_of)
        for future in concurrent.futures.as_completed(self._futures):
            if future.cancelled():
                continue
            yield _result_or_failure(future, job_of[future])

    def cancel(self) -> None:
        for future in self._futures:
            future.cancel()

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor:
    """`--scheduler tcp://HOST:PORT`: submit to a running dask.distributed cluster (each worker prepares the
    compiled kernels once, `dask_plugin.KernelPreloadPlugin`)."""

    name = "dask"

    def __init__(self, address: str) -> None:
        from distributed import Client

        from processccd.errors import ProcessCcdError

        try:
            self._client = Client(address, timeout=30)
        except (OSError, TimeoutError) as err:
            raise ProcessCcdError(f"cannot connect to the Dask scheduler at {address} ({err})") from err
        from processccd.dask_plugin import KernelPreloadPlugin

        self._client.register_plugin(KernelPreloadPlugin())
        self.address = address
        self._futures: list[Any] = []

    @property
    def n_workers(self) -> int:
        return len(self._client.scheduler_info().get("workers", {}))

    def run(self, jobs: list[FrameJob]) -> Iterator[FrameSummary]:
        from distributed import as_completed

        # pure=False: each job has side effects (it writes files) and must run even if resubmitted
        self._futures = self._client.map(run_frame, jobs, pure=False)
        index = {future.key: i for i, future in enumerate(self._futures)}
        for future in as_completed(self._futures):
            if future.cancelled():
                continue
            yield _result_or_failure(future, jobs[index[future.key]])

    def cancel(self) -> None:
        if self._futures:
            self._client.cancel(self._futures)

    def close(self) -> None:
        self._client.close()


def _result_or_failure(future: Any, job: FrameJob) -> FrameSummary:
    """The summary of a finished future; a worker that died (e.g. out of memory) becomes a failure."""
    try:
        return future.result()
    except Exception as err:
        return FrameSummary(job.data_id, STATUS_FAILED, error=f"worker failed: {type(err).__name__}: {err}",
                            error_type=type(err).__name__, exit_code=1, traceback=traceback.format_exc())


def make_executor(processes: int | None, scheduler: str | None, n_jobs: int,
                  log_level: int = logging.INFO) -> Executor:
    """`--scheduler` -> Dask; else N = min(processes or cores, jobs) local processes, serial if N is 1."""
    if scheduler:
        return DaskExecutor(scheduler)
    n_workers = min(processes or os.cpu_count() or 1, max(n_jobs, 1))
    return SerialExecutor() if n_workers <= 1 else ProcessPoolExecutor(n_workers, log_level)


def make_jobs(input_root: Path, output_root: Path, data_ids: Iterable[DataId], config: Any, *,
              clobber_output: bool = False, qa: bool = False, log_level: int = logging.INFO) -> list[FrameJob]:
    """One FrameJob per data id, carrying the config as plain data and its hash."""
    from processccd.config import config_hash, config_to_dict

    plain, digest = config_to_dict(config), config_hash(config)
    return [FrameJob(str(input_root), str(output_root), data_id, plain, digest, clobber_output, qa, log_level)
            for data_id in data_ids]
