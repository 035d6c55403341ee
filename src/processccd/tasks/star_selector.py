"""Catalog star selector: PSF/aperture-correction stars among the reference matches (measurement-spec.md §2.1)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from processccd.meas.psf_flux import nearest_pixel
from processccd.tasks.astrometry import Matches

log = logging.getLogger("processCcd.calibrate.starSelector")


@dataclass
class StarSelectorConfig:
    """2013 catalogStarSelector defaults."""

    flux_column: str = "flux.psf"
    flux_min: float = 0.0  # fluxLim: candidates need flux >= this
    flux_max: float = 0.0  # fluxMax: candidates need flux <= this; 0 switches the cut off
    kernel_size: int = 21  # side of the candidate stamp, which must lie in the image with a finite maximum
    border_width: int = 0  # added to the stamp on every side
    bad_flags: tuple[str, ...] = ("flags.pixel.edge", "flags.pixel.interpolated.center",
                                  "flags.pixel.saturated.center", "flags.badcentroid")


@dataclass(frozen=True)
class StarSelection:
    """The selected stars: indices into the matches and into the source columns."""

    match_index: np.ndarray  # int64
    source_index: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.match_index)


class StarSelectorTask:
    """Picks matched reference stars whose sources are clean, positive and have a usable stamp."""

    def __init__(self, config: StarSelectorConfig | None = None) -> None:
        self.config = config or StarSelectorConfig()

    def run(self, image: np.ndarray, columns: dict[str, np.ndarray], matches: Matches) -> StarSelection:
        config = self.config
        src = matches.source_index
        good = matches.clean_stars(columns, config.bad_flags)
        flux = columns[config.flux_column][src]
        with np.errstate(invalid="ignore"):
            good &= flux >= config.flux_min
            if config.flux_max > 0:
                good &= flux <= config.flux_max
        good &= self._stamp_ok(image, columns["centroid.sdss.x"][src], columns["centroid.sdss.y"][src])
        match_index = np.flatnonzero(good)
        log.info("Selected %d stars from %d matches", len(match_index), len(matches))
        return StarSelection(match_index, src[match_index])

    def _stamp_ok(self, image: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """True where the stamp centred on (round(x), round(y)) lies in the image and has a finite maximum."""
        half = self.config.kernel_size // 2 + self.config.border_width
        height, width = image.shape
        ok = np.zeros(len(xs), dtype=bool)
        finite = np.flatnonzero(np.isfinite(xs) & np.isfinite(ys))
        cx, cy = nearest_pixel(xs[finite]), nearest_pixel(ys[finite])
        inside = (cx >= half) & (cy >= half) & (cx < width - half) & (cy < height - half)  # no int64 overflow
        if inside.any():
            offsets = np.arange(-half, half + 1)
            stamps = image[(cy[inside, None] + offsets)[:, :, None], (cx[inside, None] + offsets)[:, None, :]]
            ok[finite[inside]] = np.isfinite(stamps.max(axis=(1, 2)))
        return ok
