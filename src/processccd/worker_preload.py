"""Imported once by the worker forkserver (`parallel.start_worker_server`), or by a Dask worker (`dask worker
--preload processccd.worker_preload`, or the plugin `parallel.DaskExecutor` registers): the pipeline's modules and
the compiled kernels (`compiled_kernels.prepare_kernels`: loaded from numba's cache, or compiled once when the
cache lacks them), so that every worker forked from the server, or every task of the Dask worker, starts ready to
process a frame instead of each importing, loading, or even compiling, the same code.

In the forkserver, it also makes the server leave without the interpreter's teardown of these modules
(~0.35 s with numba loaded) once the client has gone: it has nothing to flush or close but its own output.
"""

import atexit
import importlib
import logging
import os
import sys

from processccd.compiled_kernels import log as kernel_log
from processccd.compiled_kernels import prepare_kernels_once
from processccd.logs import TaskLogFormatter

# what a worker imports to process a frame (the kernel modules come with prepare_kernels_once); after these, a
# frame imports nothing more (checked with sys.modules before and after a demo frame). The pipeline's modules
# import astropy and scipy where they use them, so that a client that only reads the configuration (process-ccd
# with worker processes) does not import them (0.8 CPU s): the workers import them here, once.
WORKER_MODULES = ("processccd.parallel", "processccd.tasks.process_ccd", "processccd.sdss.astrans",
                  "processccd.sdss.fpc", "processccd.sdss.fpm", "processccd.config")
LIBRARY_MODULES = ("astropy.io.fits", "astropy.io.fits.verify", "astropy.wcs", "astropy.coordinates",
                   "scipy.interpolate", "scipy.ndimage", "scipy.special", "scipy.linalg", "scipy.optimize",
                   "scipy.spatial")


def imported_by_forkserver() -> bool:
    """Whether this import runs inside multiprocessing's forkserver main loop (its preload)."""
    from multiprocessing import forkserver

    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is forkserver.main.__code__:
            return True
        frame = frame.f_back
    return False


def prepare_kernels_reporting_to_stderr() -> None:
    """`prepare_kernels_once`, its INFO line (compiling) and warnings sent to stderr as task log lines whatever
    this process's logging configuration (none in the forkserver, Dask's own in a Dask worker)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TaskLogFormatter())
    level, propagate = kernel_log.level, kernel_log.propagate
    kernel_log.addHandler(handler)
    kernel_log.setLevel(logging.INFO)
    kernel_log.propagate = False
    try:
        prepare_kernels_once()
    finally:
        kernel_log.removeHandler(handler)
        kernel_log.setLevel(level)
        kernel_log.propagate = propagate


def _leave_without_teardown() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


for _name in (*WORKER_MODULES, *LIBRARY_MODULES):
    importlib.import_module(_name)
prepare_kernels_reporting_to_stderr()
if imported_by_forkserver():
    # The forked workers never run this: they leave through os._exit in the forkserver's child branch.
    atexit.register(_leave_without_teardown)
