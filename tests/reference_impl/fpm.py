"""fpM mask planes as boolean images: the reference of `processccd.sdss.fpm.read_fpm_spans` (production keeps
the spans and paints them into the mask, `paint_spans`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from processccd.sdss.fpm import rasterize_spans, read_fpm_spans


def read_fpm(path: str | Path, planes: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Mask planes of an fpM file, by SDSS name without S_MASK_ (INTERP, SATUR, ..., CR).

    Each plane is a boolean array of the untrimmed frame shape (MASKROWS, MASKCOLS) = (1489, 2048).
    `planes` restricts the result to the named planes (all by default).
    """
    fpm = read_fpm_spans(path, planes)
    return {name: rasterize_spans(spans, fpm.shape) for name, spans in fpm.spans.items()}
