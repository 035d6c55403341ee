"""shape.sdss: adaptive second moments with a fixed centre (measurement-spec.md §3, LSST 2013 SdssShape).

The weight is an elliptical Gaussian exp(-1/2 r^T W^-1 r) around the fixed centre; W is iterated with
W <- (M^-1 - W^-1)^-1 (M the weighted moments) until the ellipticity and size stop changing. At
convergence W equals the moments of a Gaussian source, and I0 = S / (pi sqrt(det W)) its peak amplitude:
the pair is the least-squares elliptical-Gaussian fit with the centre fixed, whose Fisher matrix
(constant per-pixel variance = the centre-pixel variance) gives the reported errors.

The iteration runs compiled (`moments_kernels`, one source, many stamps or many sources of one image per
call); `_adaptive_moments_numpy` is the same iteration with numpy sums over the whole box, used for images
with non-finite pixels (whose NaN propagation it defines) and as the reference of the compiled code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from processccd.meas.moments_constants import (
    BOX_SIGMAS,
    MAX_BOX_RADIUS,
    MAX_CORNER_EXPONENT,
    MAX_EXPONENT,
    MAX_INVERSE_WEIGHT,
    MIN_DETERMINANT,
    START_MOMENT,
    SUBSAMPLE_LIMIT,
    SUBSAMPLE_OFFSETS,
)
from processccd.meas.noise_replacement import deltas_by_source

UNWEIGHTED_BAD_MOMENT = 1.0 / 12.0  # moments of a single uniform pixel
FLAT_LIMIT = 4096  # boxes up to this many pixels are summed with one matrix product
CHUNK_PIXELS = 16384  # larger boxes are summed in row chunks of about this many pixels


@dataclass(frozen=True)
class AdaptiveMomentsResult:
    """Outcome of `adaptive_moments`; errors are variances (px^4), NaN when not computed.

    `covariance` is the inverse Fisher matrix of (I0, Wxx, Wyy, Wxy). `unweighted` is set for every
    failure of the weighted iteration (also when the unweighted fallback then fails, which sets
    `unweighted_bad` too); `maxiter` when the iteration limit was reached; `shift` when the weighted
    centroid strayed more than `shiftmax` pixels from the fixed centre in some iteration. `max_shift` is
    the largest such offset (x or y, px; 0 if no weighted sum succeeded): shiftmax only sets the flag, so
    one run serves shape.sdss (shiftmax 2) and flux.gaussian (shiftmax 10) alike.
    """

    ixx: float
    ixy: float
    iyy: float
    err_ixx: float
    err_ixy: float
    err_iyy: float
    i0: float
    sum_flux: float
    covariance: np.ndarray = field(repr=False)
    unweighted_bad: bool = False
    unweighted: bool = False
    shift: bool = False
    maxiter: bool = False
    max_shift: float = 0.0

    @property
    def flag(self) -> bool:
        """shape.sdss.flags: any of the failure flags."""
        return self.unweighted_bad or self.unweighted or self.shift or self.maxiter

    @property
    def determinant_radius(self) -> float:
        """(Ixx Iyy - Ixy^2)^(1/4), NaN if the moments are not positive definite."""
        det = self.ixx * self.iyy - self.ixy * self.ixy
        return math.sqrt(math.sqrt(det)) if det > 0 else math.nan


@dataclass
class _Sums:
    """Weighted sums over a box: S, sum of w*I*dx, *dy, *dx^2, *dx*dy, *dy^2 (dx, dy from the centre)."""

    s: float
    sx: float
    sy: float
    sxx: float
    sxy: float
    syy: float


class _Stamp:
    """Pixel values (float64) of one box and the pixel-centre offsets from the fixed centre."""

    def __init__(self, image: np.ndarray, xc: float, yc: float, box: tuple[int, int, int, int]) -> None:
        x0, x1, y0, y1 = box
        self.box = box
        self.x_offsets = np.arange(x0, x1 + 1, dtype=np.float64) - xc
        self.y_offsets = np.arange(y0, y1 + 1, dtype=np.float64) - yc
        self.pixels = np.asarray(image[y0 : y1 + 1, x0 : x1 + 1], dtype=np.float64)

    @cached_property
    def products(self) -> np.ndarray:
        """Rows 1, dx, dy, dx^2, dx*dy, dy^2 over the flattened box: one matrix product gives all six sums,
        and rows 3..5 against (w11, 2 w12, w22) give the weight exponent."""
        ny, nx = self.pixels.shape
        products = np.empty((6, ny, nx))
        products[0] = 1.0
        products[1] = self.x_offsets[None, :]
        products[2] = self.y_offsets[:, None]
        products[3] = (self.x_offsets * self.x_offsets)[None, :]
        products[4] = np.multiply.outer(self.y_offsets, self.x_offsets)
        products[5] = (self.y_offsets * self.y_offsets)[:, None]
        return products.reshape(6, ny * nx)


def _moment_box(
    shape: tuple[int, int], xc: float, yc: float, wxx: float, wyy: float
) -> tuple[int, int, int, int]:
    """Inclusive box limits (x0, x1, y0, y1): int-truncated c -/+ (4 sqrt(max W) + 0.5), clipped."""
    height, width = shape
    rad = min(BOX_SIGMAS * math.sqrt(max(wxx, wyy)), MAX_BOX_RADIUS) + 0.5
    x0 = max(int(xc - rad), 0)
    y0 = max(int(yc - rad), 0)
    x1 = min(int(xc + rad), width - 1)
    y1 = min(int(yc + rad), height - 1)
    return x0, x1, y0, y1


def _inverse_2x2(a11: float, a12: float, a22: float) -> tuple[float, float, float, float] | None:
    """(det, inverse 11, 12, 22) of a symmetric 2x2 matrix, None if singular or not finite."""
    det = a11 * a22 - a12 * a12
    if not math.isfinite(det) or det < MIN_DETERMINANT:
        return None
    return det, a22 / det, -a12 / det, a11 / det


def _flat_sums(stamp: _Stamp, w11: float, w12: float, w22: float) -> _Sums:
    """Weighted sums of a small box with matrix products (fast for a few thousand pixels)."""
    products = stamp.products
    exponent = np.array([w11, 2.0 * w12, w22]) @ products[3:]
    weight = np.where(exponent <= MAX_EXPONENT, np.exp(-0.5 * exponent), 0.0)
    weight *= stamp.pixels.ravel()
    return _Sums(*(float(v) for v in products @ weight))


def _row_chunk_sums(stamp: _Stamp, w11: float, w12: float, w22: float) -> _Sums:
    """Weighted sums of a large box, separable in x and y, in row chunks that stay in cache."""
    dx = stamp.x_offsets
    dx2 = dx * dx
    cross, xx_term = 2.0 * w12 * dx, w11 * dx2
    totals = np.zeros(6)
    rows = max(1, CHUNK_PIXELS // dx.size)
    for start in range(0, stamp.y_offsets.size, rows):
        dy = stamp.y_offsets[start : start + rows]
        exponent = np.multiply.outer(dy, cross)
        exponent += xx_term
        exponent += (w22 * dy * dy)[:, None]
        weight = np.exp(-0.5 * exponent)
        weight[exponent > MAX_EXPONENT] = 0.0
        weight *= stamp.pixels[start : start + rows]
        column_sums, row_sums = weight.sum(axis=0), weight.sum(axis=1)
        totals += (
            column_sums.sum(),
            column_sums @ dx,
            row_sums @ dy,
            column_sums @ dx2,
            dy @ (weight @ dx),
            row_sums @ (dy * dy),
        )
    return _Sums(*(float(v) for v in totals))


def _subsampled_sums(stamp: _Stamp, w11: float, w12: float, w22: float) -> _Sums:
    """4x4 sub-samples per pixel; each sub-sample carries the full pixel value (no 1/16, as in 2013)."""
    dx, dy = stamp.products[1], stamp.products[2]
    corners = np.array([-0.375, 0.375])
    cx = dx[None, :] + np.repeat(corners, 2)[:, None]
    cy = dy[None, :] + np.tile(corners, 2)[:, None]
    corner_exponent = w11 * cx * cx + 2.0 * w12 * cx * cy + w22 * cy * cy
    used = corner_exponent.max(axis=0) <= MAX_CORNER_EXPONENT
    sx = dx[used][None, :] + np.repeat(SUBSAMPLE_OFFSETS, 4)[:, None]
    sy = dy[used][None, :] + np.tile(SUBSAMPLE_OFFSETS, 4)[:, None]
    pixels = stamp.pixels.ravel()[used]
    weight = np.exp(-0.5 * (w11 * sx * sx + 2.0 * w12 * sx * sy + w22 * sy * sy)) * pixels
    return _Sums(
        float(weight.sum()),
        float((weight * sx).sum()),
        float((weight * sy).sum()),
        float((weight * sx * sx).sum()),
        float((weight * sx * sy).sum()),
        float((weight * sy * sy).sum()),
    )


def _weighted_sums(stamp: _Stamp, w11: float, w12: float, w22: float, subsample: bool) -> _Sums:
    """Sums of the pixels weighted by exp(-1/2 exponent), exponent = (w11, w12, w22) quadratic form."""
    if subsample:
        return _subsampled_sums(stamp, w11, w12, w22)
    if stamp.pixels.size <= FLAT_LIMIT:
        return _flat_sums(stamp, w11, w12, w22)
    return _row_chunk_sums(stamp, w11, w12, w22)


def adaptive_moments(
    image: np.ndarray,
    variance: np.ndarray,
    x: float,
    y: float,
    shiftmax: float = 2.0,
    max_iter: int = 100,
    tol1: float = 1e-5,
    tol2: float = 1e-4,
) -> AdaptiveMomentsResult:
    """Adaptive moments of `image` (background already subtracted) about the fixed centre (x, y).

    The iteration runs compiled (`moments_kernels`); an image with non-finite pixels in a moment box goes
    through the numpy `_adaptive_moments_numpy`, whose NaN propagation it keeps.
    """
    from processccd.meas import moments_kernels

    values = np.empty(9)
    outcome = moments_kernels.adaptive_moments_iteration(image, float(x), float(y), max_iter, tol1, tol2, values)
    if outcome == moments_kernels.NON_FINITE:
        return _adaptive_moments_numpy(image, variance, x, y, shiftmax, max_iter, tol1, tol2)
    wxx, wxy, wyy, i0, max_shift, s, sxx, sxy, syy = values.tolist()
    return _moments_result(variance, x, y, shiftmax, outcome != moments_kernels.CONVERGED,
                           outcome == moments_kernels.MAXITER, (wxx, wxy, wyy), i0, max_shift, (s, sxx, sxy, syy))


def _moments_result(
    variance: np.ndarray, x: float, y: float, shiftmax: float, unweighted: bool, hit_maxiter: bool,
    weight_moments: tuple[float, float, float], i0: float, max_shift: float, sums: tuple[float, float, float, float],
) -> AdaptiveMomentsResult:
    """The result of the iteration: `sums` (S, Sxx, Sxy, Syy) are the unweighted sums over the last box
    when `unweighted`, else the weighted ones at the converged W `weight_moments`."""
    shifted = max_shift > shiftmax
    nan = math.nan
    no_covariance = np.full((4, 4), nan)
    s, sxx, sxy, syy = sums
    if unweighted:
        if not (s > 0.0 and sxx > 0.0 and syy > 0.0):
            moment = UNWEIGHTED_BAD_MOMENT if s > 0.0 else nan
            return AdaptiveMomentsResult(
                moment, 0.0 if s > 0.0 else nan, moment, nan, nan, nan, i0, s, no_covariance,
                unweighted_bad=True, unweighted=True, shift=shifted, maxiter=hit_maxiter, max_shift=max_shift,
            )
        return AdaptiveMomentsResult(
            sxx / s, sxy / s, syy / s, nan, nan, nan, i0, s, no_covariance,
            unweighted=True, shift=shifted, maxiter=hit_maxiter, max_shift=max_shift,
        )
    wxx, wxy, wyy = weight_moments
    covariance = no_covariance
    ix, iy = math.floor(x + 0.5), math.floor(y + 0.5)
    if 0 <= ix < variance.shape[1] and 0 <= iy < variance.shape[0] and variance[iy, ix] > 0:
        covariance = _fisher_covariance(
            *(np.array([v]) for v in (i0, wxx, wxy, wyy)), float(variance[iy, ix])
        )[0]
    return AdaptiveMomentsResult(
        wxx, wxy, wyy, covariance[1, 1], covariance[3, 3], covariance[2, 2], i0, s, covariance,
        shift=shifted, max_shift=max_shift,
    )


def _adaptive_moments_numpy(
    image: np.ndarray,
    variance: np.ndarray,
    x: float,
    y: float,
    shiftmax: float = 2.0,
    max_iter: int = 100,
    tol1: float = 1e-5,
    tol2: float = 1e-4,
) -> AdaptiveMomentsResult:
    """`adaptive_moments` with numpy sums over the whole moment box (any image, also non-finite pixels)."""
    shape = image.shape
    stamp: _Stamp | None = None  # the last box's pixels (boxes repeat once W settles)
    wxx, wxy, wyy = START_MOMENT, 0.0, START_MOMENT
    e1_old = e2_old = mxx_old = 1e6
    i0 = 0.0
    sums = _Sums(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    unweighted = hit_maxiter = False
    max_shift = 0.0
    box = _moment_box(shape, x, y, wxx, wyy)
    converged = False
    for _ in range(max_iter):
        box = _moment_box(shape, x, y, wxx, wyy)
        inverse = _inverse_2x2(wxx, wxy, wyy)
        if inverse is None:
            unweighted = True
            break
        det_w, w11, w12, w22 = inverse
        if not (0.0 <= w11 <= MAX_INVERSE_WEIGHT and 0.0 <= w22 <= MAX_INVERSE_WEIGHT
                and abs(w12) <= MAX_INVERSE_WEIGHT):
            unweighted = True
            break
        if stamp is None or stamp.box != box:
            stamp = _Stamp(image, x, y, box)
        subsample = wxx < SUBSAMPLE_LIMIT or wyy < SUBSAMPLE_LIMIT or det_w < SUBSAMPLE_LIMIT**2
        sums = _weighted_sums(stamp, w11, w12, w22, subsample)
        if not (sums.s > 0.0 and sums.sxx > 0.0 and sums.syy > 0.0):
            unweighted = True
            break
        i0 = sums.s / (math.pi * math.sqrt(det_w))
        max_shift = max(max_shift, abs(sums.sx / sums.s), abs(sums.sy / sums.s))
        mxx, mxy, myy = sums.sxx / sums.s, sums.sxy / sums.s, sums.syy / sums.s
        e1 = (mxx - myy) / (mxx + myy)
        e2 = 2.0 * mxy / (mxx + myy)
        if abs(e1 - e1_old) < tol1 and abs(e2 - e2_old) < tol1 and abs(mxx / mxx_old - 1.0) < tol2:
            converged = True
            break
        e1_old, e2_old, mxx_old = e1, e2, mxx
        moments_inverse = _inverse_2x2(mxx, mxy, myy)
        if moments_inverse is None:
            unweighted = True
            break
        _, m11, m12, m22 = moments_inverse
        update = _inverse_2x2(m11 - w11, m12 - w12, m22 - w22)
        if update is None:
            unweighted = True
            break
        _, wxx, wxy, wyy = update
        if wxx <= 0.0 or wyy <= 0.0:
            unweighted = True
            break
    if not converged and not unweighted:
        unweighted = hit_maxiter = True
    if unweighted:
        if stamp is None or stamp.box != box:
            stamp = _Stamp(image, x, y, box)
        sums = _weighted_sums(stamp, 0.0, 0.0, 0.0, subsample=False)
    return _moments_result(variance, x, y, shiftmax, unweighted, hit_maxiter, (wxx, wxy, wyy), i0, max_shift,
                           (sums.s, sums.sxx, sums.sxy, sums.syy))


def psf_adaptive_sigma(psf_image: np.ndarray) -> float:
    """Gaussian width of a PSF image: the determinant radius (Ixx Iyy - Ixy^2)^(1/4) of its adaptive
    moments about the stamp centre ((w-1)/2, (h-1)/2), as LSST's computeShape().getDeterminantRadius()."""
    height, width = psf_image.shape
    result = adaptive_moments(psf_image, np.ones_like(psf_image), (width - 1) / 2.0, (height - 1) / 2.0)
    return result.determinant_radius


@dataclass(frozen=True)
class BatchMomentsResult:
    """Outcome of `adaptive_moments_batch` / `adaptive_moments_sources`: one entry per stamp or source, as the
    fields of `AdaptiveMomentsResult`.

    `covariance` is (N, 4, 4); `fallback` holds the indices whose moment boxes held non-finite pixels (the
    compiled iteration leaves those to the numpy code): `adaptive_moments_batch` measured them with
    `adaptive_moments`, `adaptive_moments_sources` leaves them NaN for the caller.
    """

    ixx: np.ndarray
    ixy: np.ndarray
    iyy: np.ndarray
    err_ixx: np.ndarray
    err_ixy: np.ndarray
    err_iyy: np.ndarray
    i0: np.ndarray
    sum_flux: np.ndarray
    covariance: np.ndarray = field(repr=False)
    unweighted_bad: np.ndarray = field(repr=False)
    unweighted: np.ndarray = field(repr=False)
    shift: np.ndarray = field(repr=False)
    maxiter: np.ndarray = field(repr=False)
    max_shift: np.ndarray = field(repr=False)
    fallback: np.ndarray = field(repr=False)

    @property
    def flag(self) -> np.ndarray:
        """shape.sdss.flags of every stamp."""
        return self.unweighted_bad | self.unweighted | self.shift | self.maxiter

    @property
    def determinant_radius(self) -> np.ndarray:
        """(Ixx Iyy - Ixy^2)^(1/4) per stamp, NaN where the moments are not positive definite."""
        det = self.ixx * self.iyy - self.ixy * self.ixy
        with np.errstate(invalid="ignore"):
            return np.where(det > 0, np.sqrt(np.sqrt(np.where(det > 0, det, 1.0))), math.nan)


def _fisher_covariance(
    i0: np.ndarray, wxx: np.ndarray, wxy: np.ndarray, wyy: np.ndarray, pixel_variance: np.ndarray | float
) -> np.ndarray:
    """Inverse Fisher matrices (N, 4, 4) of (I0, Wxx, Wyy, Wxy) for elliptical Gaussians on constant noise."""
    det = wxx * wyy - wxy * wxy
    f = math.pi * np.sqrt(det) / pixel_variance
    g = 3.0 * f * i0 * i0 / (16.0 * det * det)
    f01 = f * i0 * wyy / (4.0 * det)
    f02 = f * i0 * wxx / (4.0 * det)
    f03 = -f * i0 * wxy / (2.0 * det)
    f33 = 4.0 * g * (wxy * wxy + det / 3.0)
    f12 = f33 / 4.0
    f13 = -2.0 * g * wyy * wxy
    f23 = -2.0 * g * wxx * wxy
    fisher = np.stack(
        [
            np.stack([f, f01, f02, f03], axis=-1),
            np.stack([f01, g * wyy * wyy, f12, f13], axis=-1),
            np.stack([f02, f12, g * wxx * wxx, f23], axis=-1),
            np.stack([f03, f13, f23, f33], axis=-1),
        ],
        axis=-2,
    )
    return np.linalg.inv(fisher)


def _batch_result(
    values: np.ndarray, outcomes: np.ndarray, centre_variance: np.ndarray, centre_in_image: np.ndarray,
    shiftmax: float,
) -> BatchMomentsResult:
    """The results of `moments_kernels` runs (values (N, 9), outcomes (N,)) as `_moments_result` builds them
    one by one: covariance where converged with the centre pixel in the image at a positive variance;
    NON_FINITE runs are NaN, unflagged and listed in `fallback`."""
    from processccd.meas import moments_kernels

    count = len(outcomes)
    wxx, wxy, wyy, i0, max_shift, s, sxx, sxy, syy = values.T
    fallback = outcomes == moments_kernels.NON_FINITE
    converged = outcomes == moments_kernels.CONVERGED
    unweighted = ~converged & ~fallback
    with np.errstate(invalid="ignore", divide="ignore"):
        unweighted_bad = unweighted & ~((s > 0.0) & (sxx > 0.0) & (syy > 0.0))
        cases = [converged, unweighted & ~unweighted_bad, unweighted_bad]
        bad_moment = np.where(s > 0.0, UNWEIGHTED_BAD_MOMENT, math.nan)
        ixx = np.select(cases, [wxx, sxx / s, bad_moment], math.nan)
        iyy = np.select(cases, [wyy, syy / s, bad_moment], math.nan)
        ixy = np.select(cases, [wxy, sxy / s, np.where(s > 0.0, 0.0, math.nan)], math.nan)
    covariance = np.full((count, 4, 4), math.nan)
    with_covariance = converged & centre_in_image & (centre_variance > 0)
    if with_covariance.any():
        covariance[with_covariance] = _fisher_covariance(
            i0[with_covariance], wxx[with_covariance], wxy[with_covariance], wyy[with_covariance],
            centre_variance[with_covariance],
        )
    measured = ~fallback
    return BatchMomentsResult(
        ixx, ixy, iyy, covariance[:, 1, 1], covariance[:, 3, 3], covariance[:, 2, 2], i0, s, covariance,
        unweighted_bad=unweighted_bad, unweighted=unweighted, shift=measured & (max_shift > shiftmax),
        maxiter=outcomes == moments_kernels.MAXITER, max_shift=max_shift, fallback=np.flatnonzero(fallback),
    )


def _centre_pixels(xc: np.ndarray, yc: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(round(x), round(y)) clipped into the stamp, and whether the unclipped pixel lies in the stamp."""
    height, width = shape
    ix, iy = np.floor(xc + 0.5).astype(np.int64), np.floor(yc + 0.5).astype(np.int64)
    in_stamp = (ix >= 0) & (ix < width) & (iy >= 0) & (iy < height)
    return np.clip(ix, 0, width - 1), np.clip(iy, 0, height - 1), in_stamp


def adaptive_moments_batch(
    stamps: np.ndarray,
    xc: float,
    yc: float,
    pixel_variance: float = 1.0,
    shiftmax: float = 2.0,
    max_iter: int = 100,
    tol1: float = 1e-5,
    tol2: float = 1e-4,
) -> BatchMomentsResult:
    """`adaptive_moments` of N same-shape stamps (N, H, W) about one fixed centre (xc, yc), with a
    constant variance image `pixel_variance`, compiled in one call; stamps with non-finite pixels in a
    moment box go through `adaptive_moments` (listed in `fallback`)."""
    from processccd.meas import moments_kernels

    stamps = np.asarray(stamps, dtype=np.float64)
    if stamps.ndim != 3:
        raise ValueError(f"stamps must be (N, H, W), got shape {stamps.shape}")
    count = len(stamps)
    values = np.full((count, 9), math.nan)
    outcomes = np.empty(count, dtype=np.int64)
    moments_kernels.adaptive_moments_images(stamps, float(xc), float(yc), max_iter, tol1, tol2, values, outcomes)
    in_stamp = _centre_pixels(np.full(count, float(xc)), np.full(count, float(yc)), stamps.shape[1:])[2]
    result = _batch_result(values, outcomes, np.full(count, float(pixel_variance)), in_stamp, shiftmax)
    variance = np.full(stamps.shape[1:], pixel_variance)
    for index in result.fallback:
        scalar = adaptive_moments(stamps[index], variance, xc, yc, shiftmax, max_iter, tol1, tol2)
        for name in ("ixx", "ixy", "iyy", "err_ixx", "err_ixy", "err_iyy", "i0", "sum_flux", "covariance",
                     "unweighted_bad", "unweighted", "shift", "maxiter", "max_shift"):
            getattr(result, name)[index] = getattr(scalar, name)
    return result


def adaptive_moments_sources(
    image: np.ndarray,
    variance: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    footprint_deltas: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
    shiftmax: float = 2.0,
    max_iter: int = 100,
    tol1: float = 1e-5,
    tol2: float = 1e-4,
) -> BatchMomentsResult:
    """`adaptive_moments` of N sources about (x, y) on the full image, compiled in one call.

    `footprint_deltas` ((source, ys, xs, original - noise) of every footprint pixel, sorted by source, as
    `NoiseReplacer.footprint_deltas` gives) puts each source's own footprint back into `image` (every
    footprint replaced by noise) while it is measured; `image` is left as it was. Sources whose moment
    boxes hold non-finite pixels (or with a non-finite centre) are listed in `fallback` with NaN values and
    no flags: the caller measures them with `adaptive_moments`.
    """
    from processccd.meas import moments_kernels

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    count = x.size
    starts, ys, xs, deltas = deltas_by_source(footprint_deltas, count)
    values = np.full((count, 9), math.nan)
    outcomes = np.empty(count, dtype=np.int64)
    moments_kernels.adaptive_moments_sources(image, x, y, starts, ys, xs, deltas, max_iter, tol1, tol2, values,
                                             outcomes)
    finite = outcomes != moments_kernels.NON_FINITE
    ix, iy, in_image = _centre_pixels(np.where(finite, x, 0.0), np.where(finite, y, 0.0), image.shape)
    return _batch_result(values, outcomes, variance[iy, ix].astype(np.float64), in_image, shiftmax)


def psf_adaptive_sigma_batch(psf_images: np.ndarray) -> np.ndarray:
    """`psf_adaptive_sigma` of N same-shape PSF images (N, H, W) at once, (N,)."""
    psf_images = np.asarray(psf_images, dtype=np.float64)
    height, width = psf_images.shape[1:]
    return adaptive_moments_batch(psf_images, (width - 1) / 2.0, (height - 1) / 2.0).determinant_radius
