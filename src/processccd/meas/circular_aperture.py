"""Circular aperture fluxes (LSST meas_base CircularApertureFlux radii), exact pixel overlap.

Each source is measured on the image the other measurements see: every footprint replaced by noise and
the source's own footprint put back. By linearity that is the sum in each circle of the noised image, for
all sources at once, plus, per source, the exact-overlap-weighted sum of its own footprint's
(original - noise) — computed here vectorised over all footprint pixels by `pixel_circle_overlap`.

The sums over the noised image are sep's `sum_circle` with `subpix=0` (exact overlap, looping over the
sources in C): the values of photutils' `aperture_photometry(method='exact')` (tested equal to 1e-9), at
less than half its cost, which builds one overlap mask per source and radius in Python. sep reads the
pixels as float32, the exposure planes' type. The footprint correction needs the overlap at scattered
pixels of every source, which neither library has a vectorised call for, hence the closed form (tested
against `photutils.geometry.circular_overlap_grid`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from processccd.image import mask_bit

LSST_RADII: tuple[float, ...] = (3.0, 4.5, 6.0, 9.0, 12.0, 17.0, 25.0, 35.0, 50.0, 70.0)
# pixels whose values are not sky + source: an aperture overlapping one gets its `.flags.masked`
MASKED_PLANES: tuple[str, ...] = ("BAD", "SAT", "INTRP", "CR")


def _chord_integral(u: np.ndarray, radius: float) -> np.ndarray:
    """H(u) = ∫_0^u sqrt(r² - t²) dt, with the integrand 0 beyond |t| > r."""
    t = np.clip(u, -radius, radius)
    return 0.5 * (t * np.sqrt(np.maximum(radius * radius - t * t, 0.0)) + radius * radius * np.arcsin(t / radius))


def _clipped_height_integral(c: np.ndarray, a: np.ndarray, b: np.ndarray, radius: float) -> np.ndarray:
    """∫_a^b clip(c, -h(u), h(u)) du, h(u) = sqrt(max(r² - u², 0)) (a <= b)."""
    uc = np.sqrt(np.maximum(radius * radius - c * c, 0.0))
    a_in, b_in = np.clip(a, -uc, uc), np.clip(b, -uc, uc)
    outer = _chord_integral(b, radius) - _chord_integral(a, radius)
    inner = _chord_integral(b_in, radius) - _chord_integral(a_in, radius)
    return c * (b_in - a_in) + np.sign(c) * (outer - inner)


def pixel_circle_overlap(dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    """Exact area of the unit pixels centred at (dx, dy) (offsets from the circle's centre) inside the circle."""
    dx = np.asarray(dx, dtype=np.float64)
    dy = np.asarray(dy, dtype=np.float64)
    x0, x1 = dx - 0.5, dx + 0.5
    return (_clipped_height_integral(dy + 0.5, x0, x1, radius)
            - _clipped_height_integral(dy - 0.5, x0, x1, radius))


@dataclass(frozen=True)
class CircularApertureFluxes:
    """Per radius (the order of `radii`): flux, error and flags (N,) of N sources."""

    radii: tuple[float, ...]
    flux: np.ndarray  # (n_radii, N)
    flux_err: np.ndarray
    off_image: np.ndarray  # bool: the aperture is not entirely on the image
    masked: np.ndarray  # bool: a pixel of MASKED_PLANES overlaps the aperture


def _overlaps_masked(mask: np.ndarray, x: np.ndarray, y: np.ndarray, radii: tuple[float, ...]) -> np.ndarray:
    """(n_radii, N) bool: some MASKED_PLANES pixel's square comes closer to (x, y) than the radius.

    With d the distance to the nearest masked pixel centre: d - 0.5 < r is an overlap (that pixel's square lies
    within max(d - 0.5, 0)), d - sqrt(2)/2 >= r is none (every square lies within sqrt(2)/2 of its centre); the
    squares themselves are examined only for the sources some radius falls in between."""
    from scipy.spatial import cKDTree

    bits = sum(mask_bit(name) for name in MASKED_PLANES)
    ys, xs = np.nonzero(mask & bits)
    radius = np.asarray(radii, dtype=np.float64)[:, None]
    if len(xs) == 0 or len(x) == 0:
        return np.zeros((len(radii), len(x)), dtype=bool)
    tree = cKDTree(np.column_stack([xs, ys]).astype(np.float64))
    centres = np.column_stack([x, y])
    nearest = np.full(len(x), np.inf)
    finite = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    nearest[finite] = tree.query(centres[finite], distance_upper_bound=float(radius.max()) + 1.0)[0]
    overlaps = nearest - 0.5 < radius
    unsure = np.flatnonzero(((nearest - 0.7072 < radius) & ~overlaps).any(axis=0))
    # the pixel whose square is nearest has its centre within (nearest centre distance + sqrt(2)/2)
    for i, found in zip(unsure.tolist(), tree.query_ball_point(centres[unsure], nearest[unsure] + 0.71),
                        strict=True):
        found = np.asarray(found, dtype=np.int64)
        gap_x = np.maximum(np.abs(xs[found] - x[i]) - 0.5, 0.0)
        gap_y = np.maximum(np.abs(ys[found] - y[i]) - 0.5, 0.0)
        overlaps[:, i] = np.sqrt(np.min(gap_x * gap_x + gap_y * gap_y)) < radius[:, 0]
    return overlaps


def circular_aperture_fluxes(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, x: np.ndarray,
                             y: np.ndarray, radii: tuple[float, ...],
                             footprint_deltas: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
                             ) -> CircularApertureFluxes:
    """Fluxes in circles of `radii` centred at (x, y) (0-based pixel centres), exact pixel overlap.

    `image` has the footprints replaced by noise when `footprint_deltas` (`NoiseReplacer.footprint_deltas`)
    is given: source i's own (original - noise) is then added to its sums. Errors: sqrt(Σ overlap · σ²),
    σ = sqrt(variance) in float32 (as photutils' `error`). A centre that is not finite, or a circle whose
    bounding box misses the image, gives NaN fluxes (as photutils). The planes are expected finite: a NaN
    pixel makes NaN only the circles it overlaps (photutils: any circle whose bounding box holds it).
    """
    import sep

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    n = len(x)
    shape = (len(radii), n)
    flux, flux_err = np.full(shape, np.nan), np.full(shape, np.nan)
    off_image, masked = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
    finite = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    if len(finite) == 0:
        return CircularApertureFluxes(tuple(radii), flux, flux_err, off_image | True, masked)
    xf, yf = x[finite], y[finite]
    # sep reads pixels as float32, the exposure planes' type: made explicit here for any other input
    data = np.ascontiguousarray(image, dtype=np.float32)
    error = np.sqrt(np.maximum(np.asarray(variance, dtype=np.float32), np.float32(0.0)))
    height, width = image.shape
    masked[:] = _overlaps_masked(mask, x, y, radii)
    for k, radius in enumerate(radii):
        radius = float(radius)
        sums, errs, _ = sep.sum_circle(data, xf, yf, radius, err=error, subpix=0)
        # a circle whose bounding box misses the image has no sum (NaN, as photutils.aperture_photometry)
        apart = ((np.floor(xf - radius + 0.5) >= width) | (np.ceil(xf + radius + 0.5) <= 0)
                 | (np.floor(yf - radius + 0.5) >= height) | (np.ceil(yf + radius + 0.5) <= 0))
        flux[k, finite] = np.where(apart, np.nan, sums)
        flux_err[k, finite] = np.where(apart, np.nan, errs)
        off_image[k] = ((x - radius < -0.5) | (x + radius > width - 0.5) | (y - radius < -0.5)
                        | (y + radius > height - 0.5) | ~np.isfinite(x) | ~np.isfinite(y))
    if footprint_deltas is not None:
        source, ys, xs, deltas = footprint_deltas
        dx, dy = xs - x[source], ys - y[source]
        distance = np.hypot(dx, dy)
        for k, radius in enumerate(radii):
            near = np.flatnonzero(distance < radius + 0.71)  # pixels farther away do not touch the circle
            # a pixel whose farthest corner (< 0.7072 px from its centre) is inside has overlap 1
            weight = np.ones(len(near))
            rim = np.flatnonzero(distance[near] > radius - 0.7072)
            weight[rim] = pixel_circle_overlap(dx[near[rim]], dy[near[rim]], float(radius))
            flux[k] += np.bincount(source[near], weights=weight * deltas[near], minlength=n)
    return CircularApertureFluxes(tuple(radii), flux, flux_err, off_image, masked)
