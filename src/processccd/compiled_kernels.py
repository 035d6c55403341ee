"""The compiled (numba) kernels: their entry points, the argument types the pipeline calls them with, and
preparing them (loading numba's cached machine code, or compiling it once) before a process needs them.

numba compiles a kernel on its first call for the argument types of that call, or loads the machine code from its
on-disk cache (`cache=True`; where: `processccd.kernel_cache`) when that holds the same code for the same types.
Loading all of them takes ~0.4 s per process; compiling them ~1 minute. `prepare_kernels` does either up front for
the types in `warm_up_arguments` (those of the pipeline's calls), so that:
- the worker forkserver (`processccd.worker_preload`) prepares them once and every worker forked from it starts
  with the kernels in memory; with no usable cache it compiles them once there, not in every worker;
- `process-ccd --warm-up` fills the cache without data (container images, read-only installs' first run);
- concurrent processes (Dask workers starting together, two runs) compile under a lock: one compiles, the
  others then load its result.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from processccd.kernel_cache import cache_root

log = logging.getLogger("processCcd.kernels")

COMPILING_MESSAGE = "compiling the measurement kernels once (about a minute); later runs reuse them"
LOCK_NAME = "processccd-kernels.lock"

# The kernels that the pipeline calls from Python, by module. The others are called only from compiled code,
# which holds its own copy of them: loading them separately would be wasted.
ENTRY_POINTS = {
    "processccd.pixel_kernels": ("float32_order_statistics", "split_core", "unmasked_values", "smooth_symmetric",
                                 "threshold_spans", "or_diamonds", "split_possible"),
    "processccd.meas.moments_kernels": ("adaptive_moments_iteration", "adaptive_moments_sources",
                                        "adaptive_moments_images"),
    "processccd.meas.centroid_kernels": ("sdss_centroid_sources", "gaussian_centroid_sources"),
    "processccd.meas.model_flux_kernels": ("profile_model", "fit_profile", "combo", "source_model_fluxes",
                                           "psf_image_model_fit", "psf_image_pixels", "psf_image_combo_amplitudes"),
}


@dataclass(frozen=True)
class Omitted:
    """An argument left out of the call, so that the kernel's default is compiled in (numba's `omitted`)."""

    default: Any


def warm_up_arguments() -> dict[str, list[tuple[Any, ...]]]:
    """Synthetic arguments of the types the pipeline calls each entry point with (array dtype, dimensions and
    layout: C, or 'A' for a strided view; Python int -> int64, float -> float64, bool). Only their types are
    used: the kernels are compiled for them, not run. A frame then compiles nothing more, with the default
    configuration or the LSST-2020 profile (tests/test_compiled_kernels.py checks it on demo frames); a call with
    other types would compile on its first use, in each process."""
    def a(dtype: type, ndim: int) -> np.ndarray:
        return np.zeros((1,) * ndim, dtype=dtype)

    f4, f8, i8, u1, u2 = np.float32, np.float64, np.int64, np.uint8, np.uint16
    return {
        # processccd.pixel_kernels (background, detection)
        "float32_order_statistics": [(a(f4, 1), a(i8, 1))],
        "split_core": [(a(f4, 1), 0.0, 0.0, 0.0, a(f8, 1))],
        "unmasked_values": [(a(f4, 2), a(u2, 2), 0, 0, 0, 0, 0)],
        "smooth_symmetric": [(a(f4, 2), a(f8, 1), 0)],
        # footprints of the smoothed image; negative footprints; uint8 images: detection.grow_diamond,
        # lsst_footprint_labels and the negative runs with a higher inclusion level; with detection.edge_margin
        # (LSST-2020 profile) the smoothed image is a view without the margin: not C-contiguous ('A' layout)
        "threshold_spans": [(a(f4, 2), np.float32(0), Omitted(False)), (a(f4, 2), np.float32(0), True),
                            (a(u1, 2), np.uint8(1), Omitted(False)),
                            (np.zeros((2, 3), f4)[:, :2], np.float32(0), Omitted(False))],
        "or_diamonds": [(a(u2, 2), a(i8, 1), a(i8, 1), a(i8, 1), 0, 0), (a(u1, 2), a(i8, 1), a(i8, 1), a(i8, 1), 0, 0)],
        "split_possible": [(a(i8, 1), a(i8, 1), a(f4, 1), a(i8, 1), 0, (0, 0), 0)],  # the LSST-2020 deblend
        # processccd.meas.moments_kernels
        "adaptive_moments_iteration": [(a(f8, 2), 0.0, 0.0, 0, 0.0, 0.0, a(f8, 1))],
        "adaptive_moments_sources": [(a(f4, 2), a(f8, 1), a(f8, 1), a(i8, 1), a(i8, 1), a(i8, 1), a(f8, 1), 0, 0.0,
                                      0.0, a(f8, 2), a(i8, 1))],
        "adaptive_moments_images": [(a(f8, 3), 0.0, 0.0, 0, 0.0, 0.0, a(f8, 2), a(i8, 1))],
        # processccd.meas.centroid_kernels
        "sdss_centroid_sources": [(a(f4, 2), a(f4, 2), a(i8, 1), a(i8, 1), a(i8, 1), a(f8, 3), a(f8, 1), a(f8, 1),
                                   a(i8, 1), a(i8, 1), a(i8, 1), a(f8, 1), a(f8, 2), a(i8, 1))],
        "gaussian_centroid_sources": [(a(f4, 2), a(f8, 1), a(f8, 1), a(i8, 1), a(i8, 1), a(i8, 1), a(f8, 1),
                                       a(f8, 2), a(i8, 1))],
        # processccd.meas.model_flux_kernels
        "profile_model": [(a(f8, 1), a(f8, 1), a(f8, 1), a(f8, 1), 0.0, 0.0, 0.0, a(f8, 2), a(f8, 2), a(f8, 1),
                           False)],
        "fit_profile": [(a(f8, 1), a(f8, 1), a(f8, 2), a(f8, 2), a(f8, 1), a(f8, 1), a(f8, 1), a(f8, 1), 0.0,
                         (0.0, 0.0, 0.0), 0.0, 0.0, 0, 0.0, 0.0, False, 0.0, 0.0)],
        "combo": [(a(f8, 2), a(f8, 1), 0.0, 0.0, 0.0, 0.0)],
        "source_model_fluxes": [(a(f4, 2), a(f4, 2), a(u2, 2), a(i8, 1), a(i8, 1), 0.0, 0.0, 0.0, 0.0, 0.0, False,
                                 a(f8, 2), a(f8, 2), a(f8, 3), a(f8, 2), a(f8, 1), a(f8, 1), 0, False)],
        "psf_image_pixels": [(a(f8, 2), 0.0, 0.0, 0.0)],
        "psf_image_model_fit": [(a(f8, 2), *(0.0,) * 10, 0, False)],
        "psf_image_combo_amplitudes": [(a(f8, 2), 0.0, 0.0, a(f8, 2), a(f8, 2), a(f8, 2), a(f8, 3), a(f8, 2),
                                        a(f8, 1), False)],
    }


def dispatchers(entry_points_only: bool = False) -> list[Any]:
    """The numba dispatchers defined in the kernel modules, or only their ENTRY_POINTS (imports them, and
    numba)."""
    from numba.core.registry import CPUDispatcher

    found = []
    for name, entry_points in ENTRY_POINTS.items():
        module = importlib.import_module(name)
        found += [value for key, value in vars(module).items()
                  if isinstance(value, CPUDispatcher) and key == value.__name__
                  and value.py_func.__module__ == name and (key in entry_points or not entry_points_only)]
    return found


def kernel_signatures() -> list[tuple[Any, tuple[Any, ...]]]:
    """(dispatcher, argument types) of every specialisation `warm_up_arguments` describes, as numba types them
    on a call."""
    from numba.core import types

    arguments = warm_up_arguments()
    return [(dispatcher, tuple(types.Omitted(value.default) if isinstance(value, Omitted)
                               else dispatcher.typeof_pyval(value) for value in values))
            for dispatcher in dispatchers(entry_points_only=True) for values in arguments[dispatcher.__name__]]


def is_cached(dispatcher: Any, signature: tuple[Any, ...]) -> bool:
    """Whether numba's cache holds this specialisation for the current code and machine (reads the cache index,
    about 0.1 ms; numba drops the whole index of a module whose source file changed). This index is not a public
    interface of numba: if it cannot be read, the answer is False."""
    try:
        cache = dispatcher._cache
        key = cache._index_key(signature, dispatcher.targetctx.codegen())
        return key in cache._cache_file._load_index()
    except Exception as err:  # noqa: BLE001 - see the docstring
        log.debug("cache index of %s not readable: %s", dispatcher.__name__, err)
        return False


@contextlib.contextmanager
def compile_lock(directory: Path | None = None) -> Iterator[None]:
    """An exclusive lock (flock) on `processccd-kernels.lock` in the cache directory, so that processes starting
    together compile once; without a writable cache directory, no lock (each process compiles what it needs)."""
    path = (directory or cache_root()) / LOCK_NAME
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("a")
    except OSError as err:
        log.debug("no compile lock at %s: %s", path, err)
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@dataclass(frozen=True)
class KernelReport:
    """What `prepare_kernels` did: specialisations loaded from the cache and compiled, and its wall time."""

    loaded: int
    compiled: int
    seconds: float


def prepare_kernels() -> KernelReport:
    """Load every specialisation of `kernel_signatures` from numba's cache, compiling (and caching) those it lacks
    under `compile_lock`, with one INFO line when it compiles. Raises what compilation raises."""
    start = time.perf_counter()
    signatures = kernel_signatures()
    missing = [(dispatcher, signature) for dispatcher, signature in signatures if not is_cached(dispatcher, signature)]
    if missing:
        with compile_lock():
            # another process may have compiled them while this one waited for the lock
            missing = [(d, signature) for d, signature in missing if not is_cached(d, signature)]
            if missing:
                log.info(COMPILING_MESSAGE)
            for dispatcher, signature in signatures:
                dispatcher.compile(signature)
    else:
        for dispatcher, signature in signatures:
            dispatcher.compile(signature)
    return KernelReport(loaded=len(signatures) - len(missing), compiled=len(missing),
                        seconds=time.perf_counter() - start)


_prepared = False


def prepare_kernels_once() -> None:
    """`prepare_kernels` in the first call of this process (and processes forked after it), never raising: a kernel
    that could not be prepared compiles on its first call, where its error, if any, is reported with the frame."""
    global _prepared
    if _prepared:
        return
    _prepared = True
    try:
        report = prepare_kernels()
        log.debug("kernels ready: %d loaded from the cache, %d compiled, %.2f s", report.loaded, report.compiled,
                  report.seconds)
    except Exception as err:  # noqa: BLE001 - see the docstring
        log.warning("the compiled kernels could not be prepared (%s: %s); they compile on first use",
                    type(err).__name__, err)
