"""Where numba caches the compiled kernels' machine code: beside the sources, or a user cache directory when the
installed package cannot be written (a read-only site-packages, a container image, a cluster-wide install).

numba's default cache (`cache=True`) is the `__pycache__` directory beside each kernel module. When that is not
writable, `configure_kernel_cache` points `NUMBA_CACHE_DIR` at `$XDG_CACHE_HOME/processccd` (default
`~/.cache/processccd`), or at a per-user temporary directory if that cannot be written either. A user's own
`NUMBA_CACHE_DIR` always wins. `processccd/__init__.py` calls it, so every process that imports the pipeline (the
client, the worker forkserver and its workers, Dask workers) decides the same way before it imports numba. The
decision costs two `os.access` calls; numba is not imported here.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# the directories of the kernel modules (numba caches a module's kernels in its directory's __pycache__)
KERNEL_DIRS = (PACKAGE_DIR, PACKAGE_DIR / "meas")
CACHE_VARIABLE = "NUMBA_CACHE_DIR"
USER_CACHE_NAME = "processccd"

Access = Callable[[str, int], bool]


def in_tree_writable(kernel_dirs: Sequence[Path] = KERNEL_DIRS, access: Access = os.access) -> bool:
    """Whether numba can write its cache beside every kernel module: each `__pycache__` is writable, or can be
    created. (`access` is `os.access`: note that for root it reports any directory of a writable filesystem as
    writable, as it is.)"""
    for directory in kernel_dirs:
        pycache = directory / "__pycache__"
        target = pycache if pycache.is_dir() else directory
        if not access(str(target), os.W_OK | os.X_OK):
            return False
    return True


def user_cache_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """`$XDG_CACHE_HOME/processccd`, or `~/.cache/processccd` when XDG_CACHE_HOME is unset or not absolute."""
    base = environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        base = os.path.join(environ.get("HOME") or os.path.expanduser("~"), ".cache")
    return Path(base) / USER_CACHE_NAME


def _creatable(directory: Path, access: Access) -> bool:
    """Whether `directory` is writable, or its nearest existing ancestor is (so it can be created)."""
    for candidate in (directory, *directory.parents):
        if candidate.exists():
            return candidate.is_dir() and access(str(candidate), os.W_OK | os.X_OK)
    return False


def kernel_cache_dir(environ: Mapping[str, str] = os.environ, kernel_dirs: Sequence[Path] = KERNEL_DIRS,
                     access: Access = os.access) -> Path | None:
    """The directory to set as NUMBA_CACHE_DIR, or None to leave numba's choice (the user set NUMBA_CACHE_DIR, or
    the cache can go beside the sources)."""
    if environ.get(CACHE_VARIABLE) or in_tree_writable(kernel_dirs, access):
        return None
    user = user_cache_dir(environ)
    if _creatable(user, access):
        return user
    return Path(tempfile.gettempdir()) / f"{USER_CACHE_NAME}-{os.getuid()}"


def configure_kernel_cache() -> Path | None:
    """Set NUMBA_CACHE_DIR when the package cannot hold the cache (see `kernel_cache_dir`); returns the directory
    set, or None. Inherited by every process this one starts. If numba is imported already, its configuration is
    updated as well (numba reads the variable when imported; a kernel module imported since keeps its cache)."""
    directory = kernel_cache_dir()
    if directory is None:
        return None
    os.environ[CACHE_VARIABLE] = str(directory)
    config = sys.modules.get("numba.core.config")
    if config is not None:
        config.CACHE_DIR = str(directory)
    return directory


def cache_root() -> Path:
    """Where this process's kernel caches are: NUMBA_CACHE_DIR if set, else the package's `__pycache__`."""
    configured = os.environ.get(CACHE_VARIABLE)
    return Path(configured) if configured else PACKAGE_DIR / "__pycache__"
