"""Compiled (numba) adaptive moments (shape.sdss, flux.gaussian): the iteration of `shape.adaptive_moments`.

`adaptive_moments_iteration` runs it for one fixed centre on a full image, with the same rules, tests and
moment boxes; `adaptive_moments_sources` runs it for every source of an image, each with its own footprint
put back into the noise-replaced image, and `adaptive_moments_images` for a stack of stamps. The weighted
sums differ from the numpy ones only in rounding: each row is visited only over the span where the
exponent can be within the cut (the roots of the quadratic, widened by a pixel, then the exact cut per
pixel), the weight is factored as exp(-w11 dx^2 / 2) exp(-w22 dy^2 / 2) exp(-w12 dx dy) with the last factor
advanced from row to row by one multiplication per column (recomputed exactly every RESTART_ROWS rows), and
the row sums are vectorised (reassociated).

Imported lazily (numba's import costs ~0.3 s, which `process-ccd --help` should not pay); `cache=True` keeps
the compiled code beside this file between runs.
"""

from __future__ import annotations

import math

import numba
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

RESTART_ROWS = 64  # the cross factors are recomputed exactly every this many rows (rounding error < 1e-13)
MAX_CROSS_EXPONENT = 600.0  # larger |w12 dx dy| in the box: exp per pixel (the factors could overflow)
CONVERGED, UNWEIGHTED, MAXITER, NON_FINITE = 0, 1, 2, 3  # outcomes of `adaptive_moments_iteration`


@numba.njit(cache=True, error_model="numpy")
def _area(box: tuple[int, int, int, int]) -> int:
    """Pixels in the inclusive box (x0, x1, y0, y1), 0 if empty."""
    return max(box[1] - box[0] + 1, 0) * max(box[3] - box[2] + 1, 0)


@numba.njit(cache=True, error_model="numpy")
def _rows_are_finite(image: np.ndarray, x0: int, x1: int, y0: int, y1: int) -> bool:
    """Whether every pixel of the inclusive box is finite."""
    finite = True
    for row in range(y0, y1 + 1):
        pixels = image[row, x0 : x1 + 1]
        for k in range(pixels.size):
            value = np.float64(pixels[k])
            finite &= value - value == 0.0  # False for NaN and inf
    return finite


@numba.njit(cache=True, error_model="numpy")
def _box_is_finite(image: np.ndarray, box: tuple[int, int, int, int], known: tuple[int, int, int, int]) -> bool:
    """Whether every pixel of `box` is finite, given that every pixel of the box `known` is (only the
    pixels of `box` outside `known` are looked at; the numpy sums turn any non-finite pixel into NaN)."""
    x0, x1, y0, y1 = box
    k0, k1, l0, l1 = known
    top, bottom = max(y0, l0), min(y1, l1)
    if top > bottom or max(x0, k0) > min(x1, k1):  # no overlap
        return _rows_are_finite(image, x0, x1, y0, y1)
    return (_rows_are_finite(image, x0, x1, y0, top - 1) and _rows_are_finite(image, x0, x1, bottom + 1, y1)
            and _rows_are_finite(image, x0, min(x1, k0 - 1), top, bottom)
            and _rows_are_finite(image, max(x0, k1 + 1), x1, top, bottom))


@numba.njit(cache=True, error_model="numpy")
def _row_span(dy: float, xc: float, x0: int, x1: int, w11: float, w12: float, w22: float) -> tuple[int, int]:
    """Inclusive columns of the row at offset dy where the exponent may be <= MAX_EXPONENT (one pixel of
    margin around the roots of the quadratic in dx); an empty span has first > last."""
    if w11 <= 0.0:
        return x0, x1
    b = 2.0 * w12 * dy
    c = w22 * dy * dy - MAX_EXPONENT
    discriminant = b * b - 4.0 * w11 * c
    root = math.sqrt(discriminant) if discriminant > 0.0 else 0.0
    lo = xc + (-b - root) / (2.0 * w11) - 1.0
    hi = xc + (-b + root) / (2.0 * w11) + 1.0
    first = x0 if lo <= x0 else min(int(math.ceil(lo)), x1 + 1)
    last = x1 if hi >= x1 else max(int(math.floor(hi)), x0 - 1)
    return first, last


@numba.njit(cache=True, error_model="numpy")
def _add_row(sums: np.ndarray, dy: float, r0: float, r1: float, r2: float) -> None:
    """Add one row's sums of w I, w I dx, w I dx^2 (at offset dy) to the six moment sums."""
    sums[0] += r0
    sums[1] += r1
    sums[2] += dy * r0
    sums[3] += r2
    sums[4] += dy * r1
    sums[5] += dy * dy * r0


@numba.njit(cache=True, fastmath={"reassoc", "contract"}, error_model="numpy")
def _factored_row(pixels: np.ndarray, dx: np.ndarray, column_factor: np.ndarray, cross_factor: np.ndarray,
                  w11: float, cross: float, yy_term: float, row_factor: float) -> tuple[float, float, float]:
    """Sums of w I, w I dx, w I dx^2 over a row span (equal-length arrays), the weight being column_factor *
    row_factor * cross_factor where the exponent is within the cut (vectorised: the sums are reassociated)."""
    r0 = r1 = r2 = 0.0
    for k in range(pixels.size):
        offset = dx[k]
        exponent = w11 * offset * offset + cross * offset + yy_term
        value = column_factor[k] * row_factor * cross_factor[k] * pixels[k]
        value = value if exponent <= MAX_EXPONENT else 0.0
        r0 += value
        r1 += value * offset
        r2 += value * offset * offset
    return r0, r1, r2


@numba.njit(cache=True, error_model="numpy")
def _factored_sums(image: np.ndarray, xc: float, yc: float, x0: int, x1: int, y0: int, y1: int, w11: float,
                   w12: float, w22: float, sums: np.ndarray) -> None:
    """`_weighted_sums` with the weight factored as exp(-w11 dx^2 / 2) exp(-w22 dy^2 / 2) exp(-w12 dx dy),
    the last kept per column and advanced from row to row by a factor exp(-w12 dx) (recomputed exactly every
    RESTART_ROWS rows); |w12 dx dy| must stay below MAX_CROSS_EXPONENT in the box."""
    dx = np.arange(x0, x1 + 1) - xc
    column_factor = np.exp(-0.5 * w11 * dx * dx)
    step_factor = np.exp(-w12 * dx)
    cross_factor = np.ones_like(dx)
    for row in range(y0, y1 + 1):
        dy = row - yc
        if (row - y0) % RESTART_ROWS == 0:
            cross_factor[:] = np.exp(-w12 * dy * dx)
        first, last = _row_span(dy, xc, x0, x1, w11, w12, w22)
        span = slice(first - x0, last - x0 + 1)
        yy_term = w22 * dy * dy
        r0, r1, r2 = _factored_row(image[row, x0 : x1 + 1][span], dx[span], column_factor[span], cross_factor[span],
                                   w11, 2.0 * w12 * dy, yy_term, math.exp(-0.5 * yy_term))
        cross_factor *= step_factor
        _add_row(sums, dy, r0, r1, r2)


@numba.njit(cache=True, error_model="numpy")
def _direct_sums(image: np.ndarray, xc: float, yc: float, x0: int, x1: int, y0: int, y1: int, w11: float,
                 w12: float, w22: float, sums: np.ndarray) -> None:
    """`_weighted_sums` with one exp per pixel within the cut."""
    for row in range(y0, y1 + 1):
        dy = row - yc
        first, last = _row_span(dy, xc, x0, x1, w11, w12, w22)
        cross = 2.0 * w12 * dy
        yy_term = w22 * dy * dy
        r0 = r1 = r2 = 0.0
        for col in range(first, last + 1):
            dx = col - xc
            exponent = w11 * dx * dx + cross * dx + yy_term
            if exponent <= MAX_EXPONENT:
                value = math.exp(-0.5 * exponent) * np.float64(image[row, col])
                r0 += value
                r1 += value * dx
                r2 += value * dx * dx
        _add_row(sums, dy, r0, r1, r2)


@numba.njit(cache=True, error_model="numpy")
def _weighted_sums(image: np.ndarray, xc: float, yc: float, x0: int, x1: int, y0: int, y1: int, w11: float,
                   w12: float, w22: float, sums: np.ndarray) -> None:
    """S, Sx, Sy, Sxx, Sxy, Syy of the pixels of the box weighted by exp(-1/2 e), e = w11 dx^2 + 2 w12 dx dy
    + w22 dy^2 <= MAX_EXPONENT (dx, dy from the centre), into `sums`; factored unless the cross term could
    leave the float range."""
    sums[:] = 0.0
    max_dx = max(abs(x0 - xc), abs(x1 - xc))
    max_dy = max(abs(y0 - yc), abs(y1 - yc))
    if abs(w12) * max_dx * max_dy <= MAX_CROSS_EXPONENT:
        _factored_sums(image, xc, yc, x0, x1, y0, y1, w11, w12, w22, sums)
    else:
        _direct_sums(image, xc, yc, x0, x1, y0, y1, w11, w12, w22, sums)


@numba.njit(cache=True, error_model="numpy")
def _subsampled_sums(image: np.ndarray, xc: float, yc: float, x0: int, x1: int, y0: int, y1: int, w11: float,
                     w12: float, w22: float, sums: np.ndarray) -> None:
    """4x4 sub-samples per pixel, each carrying the full pixel value, over the pixels whose four corners
    (+-0.375) are all within MAX_CORNER_EXPONENT (as `shape._subsampled_sums`)."""
    sums[:] = 0.0
    for row in range(y0, y1 + 1):
        dy = row - yc
        for col in range(x0, x1 + 1):
            dx = col - xc
            used = True
            for cx in (dx - 0.375, dx + 0.375):
                for cy in (dy - 0.375, dy + 0.375):
                    if w11 * cx * cx + 2.0 * w12 * cx * cy + w22 * cy * cy > MAX_CORNER_EXPONENT:
                        used = False
            if not used:
                continue
            value = np.float64(image[row, col])
            for ox in SUBSAMPLE_OFFSETS:
                sx = dx + ox
                for oy in SUBSAMPLE_OFFSETS:
                    sy = dy + oy
                    weight = math.exp(-0.5 * (w11 * sx * sx + 2.0 * w12 * sx * sy + w22 * sy * sy)) * value
                    sums[0] += weight
                    sums[1] += weight * sx
                    sums[2] += weight * sy
                    sums[3] += weight * sx * sx
                    sums[4] += weight * sx * sy
                    sums[5] += weight * sy * sy


@numba.njit(cache=True, error_model="numpy")
def _moment_box(height: int, width: int, xc: float, yc: float, wxx: float, wyy: float) -> tuple[int, int, int, int]:
    """`shape._moment_box`: inclusive (x0, x1, y0, y1)."""
    rad = min(BOX_SIGMAS * math.sqrt(max(wxx, wyy)), MAX_BOX_RADIUS) + 0.5
    return (max(int(xc - rad), 0), min(int(xc + rad), width - 1), max(int(yc - rad), 0),
            min(int(yc + rad), height - 1))


@numba.njit(cache=True, error_model="numpy")
def adaptive_moments_iteration(image: np.ndarray, x: float, y: float, max_iter: int, tol1: float, tol2: float,
                               values: np.ndarray) -> int:
    """The iteration of `shape.adaptive_moments` about (x, y); returns CONVERGED, UNWEIGHTED, MAXITER or
    NON_FINITE (a box held a non-finite pixel: the caller must use the numpy code).

    `values` (9,) receives Wxx, Wxy, Wyy, I0, max shift and S, Sxx, Sxy, Syy: the last weighted W and sums
    when converged, else the last W tried and the unweighted sums over the last box.
    """
    height, width = image.shape
    sums = np.zeros(6)
    wxx, wxy, wyy = START_MOMENT, 0.0, START_MOMENT
    e1_old = e2_old = mxx_old = 1e6
    i0 = max_shift = 0.0
    known = (0, -1, 0, -1)  # a box known to hold only finite pixels (none yet)
    box = _moment_box(height, width, x, y, wxx, wyy)
    outcome = MAXITER
    for _ in range(max_iter):
        box = _moment_box(height, width, x, y, wxx, wyy)
        det_w = wxx * wyy - wxy * wxy
        if not math.isfinite(det_w) or det_w < MIN_DETERMINANT:
            outcome = UNWEIGHTED
            break
        w11, w12, w22 = wyy / det_w, -wxy / det_w, wxx / det_w
        if not (0.0 <= w11 <= MAX_INVERSE_WEIGHT and 0.0 <= w22 <= MAX_INVERSE_WEIGHT
                and abs(w12) <= MAX_INVERSE_WEIGHT):
            outcome = UNWEIGHTED
            break
        if not _box_is_finite(image, box, known):
            return NON_FINITE
        if _area(box) >= _area(known):
            known = box
        if wxx < SUBSAMPLE_LIMIT or wyy < SUBSAMPLE_LIMIT or det_w < SUBSAMPLE_LIMIT**2:
            _subsampled_sums(image, x, y, *box, w11, w12, w22, sums)
        else:
            _weighted_sums(image, x, y, *box, w11, w12, w22, sums)
        s = sums[0]
        if not (s > 0.0 and sums[3] > 0.0 and sums[5] > 0.0):
            outcome = UNWEIGHTED
            break
        i0 = s / (math.pi * math.sqrt(det_w))
        max_shift = max(max_shift, abs(sums[1] / s), abs(sums[2] / s))
        mxx, mxy, myy = sums[3] / s, sums[4] / s, sums[5] / s
        e1 = (mxx - myy) / (mxx + myy)
        e2 = 2.0 * mxy / (mxx + myy)
        if abs(e1 - e1_old) < tol1 and abs(e2 - e2_old) < tol1 and abs(mxx / mxx_old - 1.0) < tol2:
            outcome = CONVERGED
            break
        e1_old, e2_old, mxx_old = e1, e2, mxx
        det_m = mxx * myy - mxy * mxy
        if not math.isfinite(det_m) or det_m < MIN_DETERMINANT:
            outcome = UNWEIGHTED
            break
        u11, u12, u22 = myy / det_m - w11, -mxy / det_m - w12, mxx / det_m - w22
        det_u = u11 * u22 - u12 * u12
        if not math.isfinite(det_u) or det_u < MIN_DETERMINANT:
            outcome = UNWEIGHTED
            break
        wxx, wxy, wyy = u22 / det_u, -u12 / det_u, u11 / det_u
        if wxx <= 0.0 or wyy <= 0.0:
            outcome = UNWEIGHTED
            break
    if outcome != CONVERGED:
        if not _box_is_finite(image, box, known):
            return NON_FINITE
        _weighted_sums(image, x, y, *box, 0.0, 0.0, 0.0, sums)
    values[0], values[1], values[2], values[3], values[4] = wxx, wxy, wyy, i0, max_shift
    values[5], values[6], values[7], values[8] = sums[0], sums[3], sums[4], sums[5]
    return outcome


@numba.njit(cache=True, error_model="numpy")
def adaptive_moments_sources(image: np.ndarray, x: np.ndarray, y: np.ndarray, starts: np.ndarray, ys: np.ndarray,
                             xs: np.ndarray, deltas: np.ndarray, max_iter: int, tol1: float, tol2: float,
                             values: np.ndarray, outcomes: np.ndarray) -> None:
    """`adaptive_moments_iteration` of every source i about (x[i], y[i]) into values[i] and outcomes[i].

    While source i is measured, its own footprint pixels (ys, xs)[starts[i]:starts[i + 1]] hold the image
    value plus `deltas` (original - noise: the image has every footprint replaced by noise); they are put
    back afterwards. A non-finite centre gives NON_FINITE.
    """
    for i in range(x.size):
        if not (math.isfinite(x[i]) and math.isfinite(y[i])):
            outcomes[i] = NON_FINITE
            continue
        first, end = starts[i], starts[i + 1]
        saved = np.empty(end - first, dtype=image.dtype)
        for k in range(first, end):
            saved[k - first] = image[ys[k], xs[k]]
            image[ys[k], xs[k]] = saved[k - first] + deltas[k]
        outcomes[i] = adaptive_moments_iteration(image, x[i], y[i], max_iter, tol1, tol2, values[i])
        for k in range(first, end):
            image[ys[k], xs[k]] = saved[k - first]


@numba.njit(cache=True, error_model="numpy")
def adaptive_moments_images(images: np.ndarray, x: float, y: float, max_iter: int, tol1: float, tol2: float,
                            values: np.ndarray, outcomes: np.ndarray) -> None:
    """`adaptive_moments_iteration` of every image of the stack (N, H, W) about (x, y) into values[n] and
    outcomes[n]."""
    for n in range(images.shape[0]):
        outcomes[n] = adaptive_moments_iteration(images[n], x, y, max_iter, tol1, tol2, values[n])
