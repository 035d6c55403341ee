"""A Dask worker plugin that makes a plain `dask worker` start ready: registered by `parallel.DaskExecutor`, it
prepares the pipeline and its compiled kernels once per worker process (`processccd.worker_preload`) when it is
registered or when a worker joins later, instead of in the worker's first frame. `dask worker --preload
processccd.worker_preload` does the same when the worker starts. (A module of its own: it imports distributed,
which the local executors do not need.)"""

from __future__ import annotations

from typing import Any

from distributed import WorkerPlugin


class KernelPreloadPlugin(WorkerPlugin):
    """Imports `processccd.worker_preload` on the worker (a no-op where it was preloaded already)."""

    name = "processccd-kernels"
    idempotent = True  # registered by every process-ccd run: not run again on workers that have it

    def setup(self, worker: Any) -> None:
        import processccd.worker_preload  # noqa: F401 - importing it prepares this worker process
