"""Imported once by the worker forkserver (`parallel.start_worker_server`): the pipeline's modules and the
compiled kernels' cached machine code, so that every worker forked from it starts ready to process a frame
instead of each importing and loading the same ~1.5 s of code.

In the forkserver, it also makes the server leave without the interpreter's teardown of these modules
(~0.35 s with numba loaded) once the client has gone: it has nothing to flush or close but its own output.
"""

import atexit
import importlib
import os
import sys

from processccd.compiled_kernels import load_cached_kernels

# what a worker imports to process a frame (the kernel modules come with load_cached_kernels)
WORKER_MODULES = ("processccd.parallel", "processccd.tasks.process_ccd", "processccd.sdss.astrans",
                  "processccd.sdss.fpc", "processccd.sdss.fpm")


def imported_by_forkserver() -> bool:
    """Whether this import runs inside multiprocessing's forkserver main loop (its preload)."""
    from multiprocessing import forkserver

    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is forkserver.main.__code__:
            return True
        frame = frame.f_back
    return False


def _leave_without_teardown() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


for _name in WORKER_MODULES:
    importlib.import_module(_name)
load_cached_kernels()
if imported_by_forkserver():
    # The forked workers never run this: they leave through os._exit in the forkserver's child branch.
    atexit.register(_leave_without_teardown)
