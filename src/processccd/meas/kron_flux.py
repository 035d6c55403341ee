"""Kron flux (SExtractor's FLUX_AUTO) with sep: `kron_radius` then `sum_ellipse`, as SExtractor's PHOT_AUTOPARAMS
2.5, 3.5.

The ellipse (a, b, theta) comes from the adaptive moments (shape.sdss), not from SExtractor's isophotal
moments: the Kron radius is computed within 6 (a, b) as SExtractor does, the aperture is that ellipse
scaled by max(2.5 · Kron radius, 3.5). Each source is measured with the other footprints replaced by noise
(its own footprint put back): sep measures on the image the caller prepares, one source at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

KRON_FACTOR = 2.5  # PHOT_AUTOPARAMS[0]
MIN_RADIUS = 3.5  # PHOT_AUTOPARAMS[1]: smallest aperture, in units of (a, b)
KRON_WINDOW = 6.0  # the Kron radius is the first moment within 6 (a, b) (SExtractor's KRON_NSIG)
SUBPIX = 5  # subpixel sampling of the aperture edge (sep's default, as SExtractor)


@dataclass(frozen=True)
class KronFluxes:
    flux: np.ndarray
    flux_err: np.ndarray
    radius: np.ndarray  # Kron radius in units of the ellipse (a, b)
    flag: np.ndarray  # bool


def ellipse_from_moments(ixx: np.ndarray, iyy: np.ndarray, ixy: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                                     np.ndarray]:
    """(a, b, theta) of the second moments: semi-axes sqrt of the eigenvalues, theta of the major axis from
    +x towards +y [radians] (sep's convention)."""
    ixx, iyy, ixy = (np.asarray(v, dtype=np.float64) for v in (ixx, iyy, ixy))
    mean = 0.5 * (ixx + iyy)
    spread = np.hypot(0.5 * (ixx - iyy), ixy)
    with np.errstate(invalid="ignore"):
        a = np.sqrt(mean + spread)
        b = np.sqrt(mean - spread)
    return a, b, 0.5 * np.arctan2(2.0 * ixy, ixx - iyy)


def kron_fluxes(image: np.ndarray, variance: np.ndarray, x: np.ndarray, y: np.ndarray, ixx: np.ndarray,
                iyy: np.ndarray, ixy: np.ndarray, prepare: Callable[[int], None] | None = None,
                restore: Callable[[int], None] | None = None) -> KronFluxes:
    """Kron fluxes of N sources at (x, y) with the ellipses of moments (ixx, iyy, ixy).

    `prepare(i)` / `restore(i)` are called around source i's measurement (e.g. NoiseReplacer.insert / remove,
    which modify `image` in place). A source without a usable ellipse (non-finite or b <= 0) is flagged
    with NaN flux.
    """
    import sep

    image = np.ascontiguousarray(image, dtype=np.float32) if image.dtype != np.float32 else image
    variance = np.ascontiguousarray(variance, dtype=np.float32)
    n = len(x)
    flux, flux_err, radius = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    flag = np.ones(n, dtype=bool)
    a, b, theta = ellipse_from_moments(ixx, iyy, ixy)
    usable = np.isfinite(x) & np.isfinite(y) & np.isfinite(a) & np.isfinite(b) & np.isfinite(theta) & (b > 0)
    for i in np.flatnonzero(usable).tolist():
        xi, yi, ai, bi, ti = (np.array([v[i]], dtype=np.float64) for v in (x, y, a, b, theta))
        if prepare is not None:
            prepare(i)
        try:
            kron_radius, kron_flag = sep.kron_radius(image, xi, yi, ai, bi, ti, KRON_WINDOW)
            # SExtractor: a failed Kron radius (no positive first moment) falls back to the minimum aperture
            scale = max(KRON_FACTOR * kron_radius[0], MIN_RADIUS) if np.isfinite(kron_radius[0]) else MIN_RADIUS
            total, error, sum_flag = sep.sum_ellipse(image, xi, yi, ai, bi, ti, scale, var=variance, subpix=SUBPIX)
        finally:
            if restore is not None:
                restore(i)
        flux[i], flux_err[i], radius[i] = total[0], error[0], kron_radius[0]
        flag[i] = bool(kron_flag[0] | sum_flag[0])
    return KronFluxes(flux, flux_err, radius, flag)
