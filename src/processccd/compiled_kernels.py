"""The compiled (numba) kernel modules, and loading their cached machine code before first use.

numba compiles a kernel on its first call, or loads it from its on-disk cache (`cache=True`, beside the
module) when that holds the same code for the same argument types. Loading costs ~0.5 s per process for all
kernels. `load_cached_kernels` does it up front, so that the worker forkserver can load once and every worker
it forks starts with the kernels in memory (`processccd.worker_preload`).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

log = logging.getLogger("processCcd.kernels")

# The kernels that the pipeline calls from Python, by module. The others are called only from compiled code,
# which holds its own copy of them: loading them separately would be wasted.
ENTRY_POINTS = {
    "processccd.pixel_kernels": ("float32_order_statistics", "split_core", "unmasked_values", "smooth_symmetric",
                                 "threshold_spans", "or_diamonds", "split_possible"),
    "processccd.meas.moments_kernels": ("adaptive_moments_iteration", "adaptive_moments_sources",
                                        "adaptive_moments_images"),
    "processccd.meas.centroid_kernels": ("sdss_centroid_sources", "gaussian_centroid_sources"),
    "processccd.meas.model_flux_kernels": ("profile_model", "fit_profile", "combo", "source_model_fluxes",
                                           "psf_image_model_fit", "psf_image_pixels"),
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


def load_cached_kernels() -> int:
    """Load every specialisation of the ENTRY_POINTS that numba's on-disk cache holds for the current code;
    returns how many.

    Only entries whose cache key matches the current code and machine are loaded (those `compile` finds on
    disk); nothing is compiled here. This reads numba's cache index, which is not a public interface: if it
    differs in another numba version, or an entry cannot be loaded, that kernel is skipped and loads (or
    compiles) on its first call as usual. Preloading is only a speed-up, so it never raises.
    """
    loaded = 0
    for dispatcher in dispatchers(entry_points_only=True):
        try:
            cache = dispatcher._cache
            codegen = dispatcher.targetctx.codegen()
            keys = list(cache._cache_file._load_index())
            for key in keys:
                signature = key[0]
                if key == cache._index_key(signature, codegen):
                    dispatcher.compile(signature)
                    loaded += 1
        except Exception as err:  # noqa: BLE001 - see the docstring
            log.debug("cached code of %s not preloaded: %s", dispatcher.__name__, err)
    return loaded
