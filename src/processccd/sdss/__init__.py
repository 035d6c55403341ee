"""Readers of the five SDSS imaging formats; they return plain arrays and objects."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from astropy.io import fits

from processccd.errors import InputError


@contextmanager
def open_fits(path: Path, kind: str) -> Iterator[fits.HDUList]:
    """Open the FITS file at `path`; FITS-level failures while it is open become InputError naming it."""
    try:
        with fits.open(path, memmap=False) as hdul:
            yield hdul
    except (OSError, ValueError, IndexError, TypeError) as exc:
        raise InputError(f"{path}: cannot read {kind} file ({exc})") from exc
