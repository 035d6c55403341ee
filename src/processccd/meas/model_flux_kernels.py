"""Compiled (numba) multishapelet fits: the fit region, the Levenberg-Marquardt ellipse fit with the amplitude
solved linearly (variable projection), the PSF-convolved profile models, the combo rules and the PSF model.

The rules are those documented in `model_flux` (which wraps these functions); this module makes them fast:

* A source is one call (`source_model_fluxes`): the optimiser and every model evaluation run in compiled
  code, so a fit of a 150-pixel source no longer pays for ~40 small numpy calls per evaluation.
* Gaussians on the pixel grid are evaluated by recurrence along the rows of the (row-major) fit pixels and
  from each row's first pixel to the next row's (`_gaussian_matrix`): a few multiplications instead of an
  exp per pixel. The recurrence restarts (with exp) every RESTART_INTERVAL steps, across long jumps, and
  where a Gaussian has fallen below TINY (nothing underflows into a run); its relative error stays ~1e-13.

Every function uses numba's "numpy" error model: a float division by zero gives inf / NaN as in numpy (the
rules below test for them) instead of raising ZeroDivisionError. `cache=True` keeps the compiled code beside
this file between runs (numba's import and loading the cached code cost ~0.5 s once per process).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np

from processccd.meas.model_flux_constants import DEGENERATE_COMBO, MAX_LOG_RADIUS

# reassociation and contraction only: NaN and inf keep their IEEE meaning (the fits test them). With "nsz" and
# "arcp" too, the code loaded from numba's cache rounded differently from freshly compiled code in most fits
# (1e-15 typically, 0.4 in flagged ones); without them, in 1 source of the demo, by 1e-11 (measured).
FASTMATH = {"reassoc", "contract"}
RESTART_INTERVAL = 256  # recurrence steps after which the Gaussians are recomputed directly
MAX_STEP = 8  # longest jump between pixels bridged by the recurrence
TINY = 1e-280

STATUS_OK = 0
STATUS_EMPTY_MODEL = 1  # the model vanished at the starting point (the fit has no result)
SETTLED_MAX_ETA = 3.0  # fit_ellipse's cost_tolerance stop applies only to axis ratios above exp(-3) = 0.05 ...
SETTLED_LOG_RADIUS = (-4.0, 6.0)  # ... and radii between exp(-4) = 0.018 and exp(6) = 403 px


@numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _integer_step(delta: float) -> int:
    """delta as an integer number of pixels (offsets of pixel centres differ by integers up to rounding)."""
    step = round(delta)
    return int(step) if abs(delta - step) < 1e-6 else MAX_STEP + 1


# a pixel's place in the recurrences of `_planned_gaussian_matrix` (`gaussian_plan`): two bits
PLAN_NEW_ROW = 1  # the first pixel of a row
PLAN_RECURRENCE = 2  # follows by recurrence (else computed directly, with exp)
PLAN_ALONG_ROW = PLAN_RECURRENCE  # from the previous pixel of its row, `jump` columns to the left
PLAN_NEXT_ROW = PLAN_RECURRENCE | PLAN_NEW_ROW  # from the first pixel of the row above (`jump` columns apart)
N_SCRATCH = 7  # rows of the (7, K) scratch array of `_planned_gaussian_matrix`


@numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def gaussian_plan(dx: np.ndarray, dy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How `_planned_gaussian_matrix` reaches each of the row-major pixels at offsets (dx, dy): (kind, jump) per
    pixel. It depends only on the pixels, so a fit works it out once for all its evaluations.

    A pixel up to MAX_STEP to the right of the previous one follows along the row; the first pixel of a row
    follows from the first pixel of the row above (up to MAX_STEP columns away, either side). Values are
    computed directly (exp) at the first pixel, after RESTART_INTERVAL recurrence steps, and where a row has no
    row above or a jump is longer."""
    kinds = np.empty(dx.size, dtype=np.int8)
    jumps = np.zeros(dx.size, dtype=np.int64)
    start_x = start_y = math.nan
    chain = RESTART_INTERVAL
    for i in range(dx.size):
        x, y = dx[i], dy[i]
        jump = MAX_STEP + 1
        new_row = i == 0 or y != dy[i - 1]
        if chain < RESTART_INTERVAL:
            if not new_row:
                jump = _integer_step(x - dx[i - 1])
                if jump < 1:
                    jump = MAX_STEP + 1
            elif _integer_step(y - start_y) == 1:
                jump = _integer_step(x - start_x)
        if abs(jump) <= MAX_STEP:
            kinds[i], jumps[i] = (PLAN_NEXT_ROW, jump) if new_row else (PLAN_ALONG_ROW, jump)
            chain += 1 + abs(jump) if new_row else jump
        else:
            kinds[i] = PLAN_NEW_ROW if new_row else 0
            chain = 0
        if new_row:
            start_x, start_y = x, y
    return kinds, jumps


@numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _planned_gaussian_matrix(dx: np.ndarray, dy: np.ndarray, kinds: np.ndarray, jumps: np.ndarray,
                             inverses: np.ndarray, out: np.ndarray, scratch: np.ndarray) -> None:
    """out[i, k] = exp(-r_i'C_k^-1 r_i / 2) at the offsets r_i = (dx_i, dy_i) of row-major pixels, for
    `inverses` (3, K) rows of C_k^-1 (xx, xy, yy), following `gaussian_plan(dx, dy)` = (kinds, jumps);
    `scratch` (N_SCRATCH, K) is work space.

    With R(x, y) = N(x + 1, y) / N(x, y) and V(x, y) = N(x, y + 1) / N(x, y):
    N(x + 1, y) = N R, R(x + 1, y) = R exp(-Cinv_xx), V(x + 1, y) = V exp(-Cinv_xy),
    N(x, y + 1) = N V, R(x, y + 1) = R exp(-Cinv_xy), V(x, y + 1) = V exp(-Cinv_yy).
    Any value outside [TINY, 2] is computed directly too (underflow cannot carry a recurrence).
    """
    n_gauss = inverses.shape[1]
    step_x, step_xy, step_y = scratch[0], scratch[1], scratch[2]
    ratio_x, start_value, start_ratio_x, start_ratio_y = scratch[3], scratch[4], scratch[5], scratch[6]
    for k in range(n_gauss):
        step_x[k], step_xy[k], step_y[k] = np.exp(-inverses[0, k]), np.exp(-inverses[1, k]), np.exp(-inverses[2, k])
    for i in range(dx.size):
        kind, jump = kinds[i], jumps[i]
        n_invalid = 0  # values a recurrence cannot carry (underflow, or not finite)
        if kind == PLAN_ALONG_ROW:
            if jump == 1:  # the common case: min / max / sum reductions are the fastest range test here (measured)
                smallest, largest, total = 1.0, 1.0, 0.0
                for k in range(n_gauss):
                    value = out[i - 1, k] * ratio_x[k]
                    ratio_x[k] *= step_x[k]
                    out[i, k] = value
                    smallest, largest, total = min(smallest, value), max(largest, value), total + value
                n_invalid = 0 if smallest >= TINY and largest <= 2.0 and total == total else 1
            else:
                for k in range(n_gauss):
                    value, ratio = out[i - 1, k], ratio_x[k]
                    for _ in range(jump):
                        value *= ratio
                        ratio *= step_x[k]
                    out[i, k], ratio_x[k] = value, ratio
                    n_invalid += not (TINY <= value <= 2.0)
        elif kind == PLAN_NEXT_ROW:
            for k in range(n_gauss):
                value = start_value[k] * start_ratio_y[k]
                ratio, ratio_y = start_ratio_x[k] * step_xy[k], start_ratio_y[k] * step_y[k]
                for _ in range(jump):
                    value *= ratio
                    ratio *= step_x[k]
                    ratio_y *= step_xy[k]
                for _ in range(-jump):
                    ratio /= step_x[k]
                    value /= ratio
                    ratio_y /= step_xy[k]
                out[i, k], ratio_x[k] = value, ratio
                start_value[k], start_ratio_x[k], start_ratio_y[k] = value, ratio, ratio_y
                n_invalid += not (TINY <= value <= 2.0)
        direct = (kind & PLAN_RECURRENCE) == 0
        if direct or n_invalid:
            x, y = dx[i], dy[i]
            new_row = (kind & PLAN_NEW_ROW) != 0
            for k in range(n_gauss):
                if direct or not (TINY <= out[i, k] <= 2.0):
                    ixx, ixy, iyy = inverses[0, k], inverses[1, k], inverses[2, k]
                    out[i, k] = math.exp(-0.5 * (ixx * x * x + 2.0 * ixy * x * y + iyy * y * y))
                    ratio_x[k] = math.exp(-(ixx * (x + 0.5) + ixy * y))
                    if new_row:
                        start_value[k], start_ratio_x[k] = out[i, k], ratio_x[k]
                        start_ratio_y[k] = math.exp(-(iyy * (y + 0.5) + ixy * x))


@numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _gaussian_matrix(dx: np.ndarray, dy: np.ndarray, inverses: np.ndarray, out: np.ndarray) -> None:
    """`_planned_gaussian_matrix` of row-major pixels, planned and evaluated once."""
    kinds, jumps = gaussian_plan(dx, dy)
    _planned_gaussian_matrix(dx, dy, kinds, jumps, inverses, out, np.empty((N_SCRATCH, inverses.shape[1])))


@numba.njit(cache=True, error_model="numpy")
def _convolved_inverse(scale: float, qxx: float, qxy: float, qyy: float, offset: np.ndarray
                       ) -> tuple[float, float, float, float]:
    """Inverse (xx, xy, yy) and determinant of the covariance scale * Q + offset (offset = Pxx, Pxy, Pyy)."""
    cxx = scale * qxx + offset[0]
    cxy = scale * qxy + offset[1]
    cyy = scale * qyy + offset[2]
    det = cxx * cyy - cxy * cxy
    return cyy / det, -cxy / det, cxx / det, det


@numba.njit(cache=True, error_model="numpy")
def _ellipse(p0: float, p1: float, p2: float) -> tuple[float, float, float]:
    """(Qxx, Qxy, Qyy) from (eta1, eta2, ln r), as model_flux._ellipse_from_parameters."""
    eta = math.hypot(p0, p1)
    r2 = math.exp(2.0 * p2)
    if eta < 1e-12:
        return r2, 0.0, r2
    c, s = math.cosh(eta), math.sinh(eta) / eta
    return r2 * (c + s * p0), r2 * (s * p1), r2 * (c - s * p0)


@numba.njit(cache=True, error_model="numpy")
def _ellipse_jacobian(p0: float, p1: float, p2: float, jacobian: np.ndarray) -> None:
    """jacobian[a, b] = dQ_a / dp_b (a over Qxx, Qxy, Qyy), as model_flux._ellipse_jacobian."""
    eta = math.hypot(p0, p1)
    r2 = math.exp(2.0 * p2)
    if eta < 1e-4:
        c, s, ds = 1.0 + 0.5 * eta * eta, 1.0 + eta * eta / 6.0, 1.0 / 3.0 + eta * eta / 30.0
    else:
        c, s = math.cosh(eta), math.sinh(eta) / eta
        ds = (c - s) / (eta * eta)
    ds1, ds2 = ds * p0, ds * p1
    jacobian[0, 0] = r2 * (s * p0 + ds1 * p0 + s)
    jacobian[0, 1] = r2 * (s * p1 + ds2 * p0)
    jacobian[0, 2] = r2 * (2.0 * (c + s * p0))
    jacobian[1, 0] = r2 * (ds1 * p1)
    jacobian[1, 1] = r2 * (ds2 * p1 + s)
    jacobian[1, 2] = r2 * (2.0 * s * p1)
    jacobian[2, 0] = r2 * (s * p0 - ds1 * p0 - s)
    jacobian[2, 1] = r2 * (s * p1 - ds2 * p0)
    jacobian[2, 2] = r2 * (2.0 * (c - s * p0))


class _Workspace(NamedTuple):
    """The arrays one ellipse fit reuses at every evaluation (`_workspace`)."""

    kinds: np.ndarray  # gaussian_plan of the fit pixels
    jumps: np.ndarray
    gaussians: np.ndarray  # (N, K) Gaussian values at the pixels
    scratch: np.ndarray  # (N_SCRATCH, K) for _planned_gaussian_matrix
    model: np.ndarray  # (N,) weighted model
    sums: np.ndarray  # (N, 12) the Gaussians times the derivative coefficients
    jacobian: np.ndarray  # (3, 3) of the ellipse
    inverses: np.ndarray  # (3, K) inverse covariances at the current trial point
    model_coefficients: np.ndarray  # (K,)
    coefficients: np.ndarray  # (K, 12)


@numba.njit(cache=True, error_model="numpy")
def _workspace(dx: np.ndarray, dy: np.ndarray, n_gauss: int) -> _Workspace:
    kinds, jumps = gaussian_plan(dx, dy)
    return _Workspace(kinds, jumps, np.empty((dx.size, n_gauss)), np.empty((N_SCRATCH, n_gauss)), np.empty(dx.size),
                      np.empty((dx.size, 12)), np.empty((3, 3)), np.empty((3, n_gauss)), np.empty(n_gauss),
                      np.empty((n_gauss, 12)))


@numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _model_coefficients(p: np.ndarray, scales: np.ndarray, offsets: np.ndarray, norm_fluxes: np.ndarray,
                        weight: float, work: _Workspace) -> None:
    """At p, into `work`: the inverse covariances (3, K) of the Gaussians s_k Q(p) + P_k, the coefficients (K,)
    of their values in the weighted model and those (K, 12) in its p-derivatives (column 4 b + j: monomial j of
    (dx^2, dx dy, dy^2, 1) in dm/dp_b, the ellipse Jacobian folded in)."""
    n_gauss = scales.size
    qxx, qxy, qyy = _ellipse(p[0], p[1], p[2])
    jacobian, inverses, coefficients = work.jacobian, work.inverses, work.coefficients
    _ellipse_jacobian(p[0], p[1], p[2], jacobian)
    for k in range(n_gauss):
        ixx, ixy, iyy, det = _convolved_inverse(scales[k], qxx, qxy, qyy, offsets[k])
        inverses[0, k], inverses[1, k], inverses[2, k] = ixx, ixy, iyy
        model_coefficient = weight * norm_fluxes[k] / math.sqrt(det)
        scaled = model_coefficient * scales[k]
        # d N / d(Qxx, Qxy, Qyy) / N as polynomials in (dx^2, dx dy, dy^2, 1) (Qxy enters C twice)
        d_xx = (0.5 * ixx * ixx, ixx * ixy, 0.5 * ixy * ixy, -0.5 * ixx)
        d_xy = (ixx * ixy, ixx * iyy + ixy * ixy, ixy * iyy, -ixy)
        d_yy = (0.5 * ixy * ixy, ixy * iyy, 0.5 * iyy * iyy, -0.5 * iyy)
        for b in range(3):
            for j in range(4):
                coefficients[k, 4 * b + j] = scaled * (jacobian[0, b] * d_xx[j] + jacobian[1, b] * d_xy[j]
                                                       + jacobian[2, b] * d_yy[j])
        work.model_coefficients[k] = model_coefficient


@numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _cost(dx: np.ndarray, dy: np.ndarray, data: np.ndarray, work: _Workspace) -> tuple[bool, float, float]:
    """Cost 0.5 |A m - d|^2 and amplitude A = m.d / m.m of the model m at the point of `_model_coefficients`
    (m into work.model, the Gaussians into work.gaussians for `_derivatives`). Returns (ok, cost, A); ok is
    False when the model vanishes."""
    _planned_gaussian_matrix(dx, dy, work.kinds, work.jumps, work.inverses, work.gaussians, work.scratch)
    model = work.model
    np.dot(work.gaussians, work.model_coefficients, model)
    mm = md = 0.0
    for i in range(dx.size):
        mm += model[i] * model[i]
        md += model[i] * data[i]
    if not mm > 0:
        return False, 0.0, 0.0
    amplitude = md / mm
    residual_squared = 0.0
    for i in range(dx.size):
        r = model[i] * amplitude - data[i]
        residual_squared += r * r
    return True, 0.5 * residual_squared, amplitude


@numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _derivatives(dx: np.ndarray, dy: np.ndarray, data: np.ndarray, work: _Workspace, amplitude: float,
                 hessian: np.ndarray, gradient: np.ndarray) -> None:
    """Gauss-Newton Hessian J'J and gradient J'f (J the Jacobian of the residuals f = A m - d including dA/dp)
    from the Gram matrix of (m, dm/dp, d), after `_cost` at the same point."""
    sums_all = work.sums
    np.dot(work.gaussians, work.coefficients, sums_all)  # (N, 12)
    model = work.model
    mm = m1 = m2 = m3 = md = 0.0
    g11 = g12 = g13 = g22 = g23 = g33 = d1 = d2 = d3 = 0.0
    for i in range(dx.size):
        x, y = dx[i], dy[i]
        sums = sums_all[i]
        xx, xy, yy = x * x, x * y, y * y
        m = model[i]
        a1 = sums[0] * xx + sums[1] * xy + sums[2] * yy + sums[3]
        a2 = sums[4] * xx + sums[5] * xy + sums[6] * yy + sums[7]
        a3 = sums[8] * xx + sums[9] * xy + sums[10] * yy + sums[11]
        d = data[i]
        mm += m * m
        m1 += m * a1
        m2 += m * a2
        m3 += m * a3
        md += m * d
        g11 += a1 * a1
        g12 += a1 * a2
        g13 += a1 * a3
        g22 += a2 * a2
        g23 += a2 * a3
        g33 += a3 * a3
        d1 += a1 * d
        d2 += a2 * d
        d3 += a3 * d
    # J = A D + m dA' with dA = (D.d - 2 A D.m) / m.m (rows D = dm/dp); J'J and J'f from the Gram matrix
    a2_ = amplitude * amplitude
    e1 = (d1 - 2.0 * amplitude * m1) / mm
    e2 = (d2 - 2.0 * amplitude * m2) / mm
    e3 = (d3 - 2.0 * amplitude * m3) / mm
    hessian[0, 0] = a2_ * g11 + 2.0 * amplitude * m1 * e1 + mm * e1 * e1
    hessian[1, 1] = a2_ * g22 + 2.0 * amplitude * m2 * e2 + mm * e2 * e2
    hessian[2, 2] = a2_ * g33 + 2.0 * amplitude * m3 * e3 + mm * e3 * e3
    hessian[0, 1] = hessian[1, 0] = a2_ * g12 + amplitude * (m1 * e2 + e1 * m2) + mm * e1 * e2
    hessian[0, 2] = hessian[2, 0] = a2_ * g13 + amplitude * (m1 * e3 + e1 * m3) + mm * e1 * e3
    hessian[1, 2] = hessian[2, 1] = a2_ * g23 + amplitude * (m2 * e3 + e2 * m3) + mm * e2 * e3
    residual_model = amplitude * mm - md
    gradient[0] = amplitude * (amplitude * m1 - d1) + e1 * residual_model
    gradient[1] = amplitude * (amplitude * m2 - d2) + e2 * residual_model
    gradient[2] = amplitude * (amplitude * m3 - d3) + e3 * residual_model


@numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def _evaluate(p: np.ndarray, dx: np.ndarray, dy: np.ndarray, data: np.ndarray, scales: np.ndarray,
              offsets: np.ndarray, norm_fluxes: np.ndarray, weight: float, work: _Workspace, hessian: np.ndarray,
              gradient: np.ndarray) -> tuple[bool, float, float]:
    """Cost, Hessian, gradient (into `hessian`, `gradient`) and amplitude at p, for the weighted model
    m = weight sum_k f_k N(s_k Q(p) + P_k) (into work.model). Returns (ok, cost, amplitude); ok is False when m
    vanishes."""
    _model_coefficients(p, scales, offsets, norm_fluxes, weight, work)
    ok, cost, amplitude = _cost(dx, dy, data, work)
    if ok:
        _derivatives(dx, dy, data, work, amplitude, hessian, gradient)
    return ok, cost, amplitude


@numba.njit(cache=True, error_model="numpy")
def _clip(value: float, lower: float, upper: float) -> float:
    """Clip to [lower, upper]; NaN stays NaN (as np.clip)."""
    if value < lower:
        return lower
    if value > upper:
        return upper
    return value


@numba.njit(cache=True, error_model="numpy")
def _solve_damped(hessian: np.ndarray, mu: float, gradient: np.ndarray, step: np.ndarray) -> bool:
    """step = -(H + mu I)^-1 g for the symmetric 3 x 3 H by LDL'; False when a pivot is exactly 0."""
    d0 = hessian[0, 0] + mu
    if d0 == 0.0:
        return False
    l10, l20 = hessian[0, 1] / d0, hessian[0, 2] / d0
    d1 = hessian[1, 1] + mu - l10 * hessian[0, 1]
    if d1 == 0.0:
        return False
    c21 = hessian[1, 2] - l20 * hessian[0, 1]
    l21 = c21 / d1
    d2 = hessian[2, 2] + mu - l20 * hessian[0, 2] - l21 * c21
    if d2 == 0.0:
        return False
    y0 = -gradient[0]
    y1 = -gradient[1] - l10 * y0
    y2 = -gradient[2] - l20 * y0 - l21 * y1
    step[2] = y2 / d2
    step[1] = y1 / d1 - l21 * step[2]
    step[0] = y0 / d0 - l10 * step[1] - l20 * step[2]
    return True


@numba.njit(cache=True, error_model="numpy")
def _smallest_offset_variance(offsets: np.ndarray) -> float:
    """The smallest eigenvalue of the offset covariances (Pxx, Pxy, Pyy rows): the narrowest PSF axis."""
    smallest = math.inf
    for c in range(offsets.shape[0]):
        pxx, pxy, pyy = offsets[c, 0], offsets[c, 1], offsets[c, 2]
        smallest = min(smallest, 0.5 * (pxx + pyy) - math.hypot(0.5 * (pxx - pyy), pxy))
    return smallest


@numba.njit(cache=True, error_model="numpy")
def _shrunk_to_a_point(p: np.ndarray, largest_scale: float, narrowest_offset: float, ratio: float) -> bool:
    """Whether the widest Gaussian of the ellipse at p (major-axis variance x largest_scale) is below `ratio`
    x the narrowest offset (PSF) variance: the model is then the PSF to ~ratio (the fit of a point source)."""
    return largest_scale * math.exp(2.0 * p[2] + math.hypot(p[0], p[1])) < ratio * narrowest_offset


@numba.njit(cache=True, error_model="numpy")
def _settled(p: np.ndarray, cost: float, cost_new: float, cost_tolerance: float) -> bool:
    """The early stop of `fit_ellipse`: an accepted step decreased the cost by at most cost_tolerance
    (relative), with the ellipse well inside the parameter box (|eta| < SETTLED_MAX_ETA, ln r in
    SETTLED_LOG_RADIUS): fits that creep along a bound or towards one keep the 2013 rules (and reach
    max_iterations as in 2013)."""
    return (cost - cost_new <= cost_tolerance * cost_new and math.hypot(p[0], p[1]) < SETTLED_MAX_ETA
            and SETTLED_LOG_RADIUS[0] < p[2] < SETTLED_LOG_RADIUS[1])


@numba.njit(cache=True, error_model="numpy")
def fit_ellipse(dx: np.ndarray, dy: np.ndarray, data: np.ndarray, weight: float, scales: np.ndarray,
                offsets: np.ndarray, fluxes: np.ndarray, p0: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                tau: float, gtol: float, max_iterations: int, point_ratio: float = 0.0, cost_tolerance: float = 0.0
                ) -> tuple[int, np.ndarray, float, bool]:
    """Levenberg-Marquardt (Nielsen damping, box-clipped) fit of the ellipse parameters p = (eta1, eta2, ln r)
    of the model weight * sum_k fluxes_k N(scales_k Q(p) + offsets_k) to `data` (already weighted), with
    the amplitude solved linearly at every step. Returns (status, p, amplitude, max_iter).

    A trial point's ellipticity is constrained as multiShapelet's objective did: |eta| at most upper[0] (the
    direction kept), so the axis ratio never falls below exp(-upper[0]) (clipping eta1 and eta2 apart let
    diagonal ellipses reach exp(-sqrt(2) upper[0])).

    Two shortcuts to the optimum the 2013 iteration reaches (both off when 0):
    * `point_ratio`: a fit that shrinks (an accepted step decreased ln r) to an ellipse whose widest Gaussian
      is below point_ratio x the narrowest offset variance (`_shrunk_to_a_point`) is heading for zero size, where
      the model is the PSF: the 2013 LM walked ln r down ~0.2 per step until the gradient fell below gtol. Once
      per fit the point with ln r at its lower bound is tried, and taken if its cost is not higher.
    * `cost_tolerance`: stop after an accepted step that decreased the cost by at most this (relative), when
      the ellipse is well inside the box (`_settled`).
    """
    norm_fluxes = fluxes / (2.0 * math.pi)
    largest_scale = scales.max()
    narrowest_offset = _smallest_offset_variance(offsets)
    jumped = not point_ratio > 0.0
    work = _workspace(dx, dy, scales.size)
    p = np.empty(3)
    for j in range(3):
        p[j] = _clip(p0[j], lower[j], upper[j])
    hessian, gradient = np.empty((3, 3)), np.empty(3)
    step, p_new = np.empty(3), np.empty(3)
    ok, cost, amplitude = _evaluate(p, dx, dy, data, scales, offsets, norm_fluxes, weight, work, hessian, gradient)
    if not ok:
        return STATUS_EMPTY_MODEL, p, 0.0, False
    diagonal_max = hessian[0, 0]
    for j in range(1, 3):  # NaN propagates as in np.max
        if hessian[j, j] > diagonal_max or math.isnan(hessian[j, j]):
            diagonal_max = hessian[j, j]
    mu = tau * diagonal_max
    nu = 2.0
    for _ in range(max_iterations):
        if abs(gradient[0]) <= gtol and abs(gradient[1]) <= gtol and abs(gradient[2]) <= gtol:
            return STATUS_OK, p, amplitude, False
        if not _solve_damped(hessian, mu, gradient, step):
            return STATUS_OK, p, amplitude, False
        for j in range(3):
            p_new[j] = _clip(p[j] + step[j], lower[j], upper[j])
        eta_new = math.hypot(p_new[0], p_new[1])
        if eta_new > upper[0]:
            p_new[0], p_new[1] = p_new[0] * (upper[0] / eta_new), p_new[1] * (upper[0] / eta_new)
        for j in range(3):
            step[j] = p_new[j] - p[j]
        if math.sqrt(step[0] ** 2 + step[1] ** 2 + step[2] ** 2) <= 1e-8 * (
                math.sqrt(p[0] ** 2 + p[1] ** 2 + p[2] ** 2) + 1e-8):
            return STATUS_OK, p, amplitude, False
        # the trial point's cost first; its derivatives only if the step is accepted
        _model_coefficients(p_new, scales, offsets, norm_fluxes, weight, work)
        ok, cost_new, amplitude_new = _cost(dx, dy, data, work)
        if not ok:
            mu *= nu
            nu *= 2.0
            continue
        predicted = 0.5 * (step[0] * (mu * step[0] - gradient[0]) + step[1] * (mu * step[1] - gradient[1])
                           + step[2] * (mu * step[2] - gradient[2]))
        rho = (cost - cost_new) / predicted if predicted > 0 else -1.0
        if rho > 0:
            settled = cost_tolerance > 0.0 and _settled(p_new, cost, cost_new, cost_tolerance)
            p[:] = p_new
            _derivatives(dx, dy, data, work, amplitude_new, hessian, gradient)
            amplitude, cost = amplitude_new, cost_new
            if settled:
                return STATUS_OK, p, amplitude, False
            mu *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            nu = 2.0
            if not jumped and step[2] < 0.0 and _shrunk_to_a_point(p, largest_scale, narrowest_offset, point_ratio):
                jumped = True
                p_new[0], p_new[1], p_new[2] = p[0], p[1], lower[2]
                _model_coefficients(p_new, scales, offsets, norm_fluxes, weight, work)
                ok, cost_new, amplitude_new = _cost(dx, dy, data, work)
                if ok and cost_new <= cost:
                    p[:] = p_new
                    _derivatives(dx, dy, data, work, amplitude_new, hessian, gradient)
                    amplitude, cost = amplitude_new, cost_new
        else:
            mu *= nu
            nu *= 2.0
    return STATUS_OK, p, amplitude, True


@numba.njit(cache=True, fastmath=FASTMATH, error_model="numpy")
def polynomial_gaussian_sum(dx: np.ndarray, dy: np.ndarray, inverses: np.ndarray, polynomial: np.ndarray
                            ) -> np.ndarray:
    """sum_k N_k (c_k . (1, dx, dy, dx^2, dx dy, dy^2)) at the offsets, N_k = exp(-r'C_k^-1 r / 2) with
    `inverses` (3, K) rows of C_k^-1 (xx, xy, yy) and `polynomial` (K, 6) (fold the normalisation into it)."""
    gaussians = np.empty((dx.size, inverses.shape[1]))
    _gaussian_matrix(dx, dy, inverses, gaussians)
    sums = np.dot(gaussians, polynomial)  # (N, 6)
    model = np.empty(dx.size)
    for i in range(dx.size):
        x, y = dx[i], dy[i]
        model[i] = sums[i, 0] + sums[i, 1] * x + sums[i, 2] * y + sums[i, 3] * x * x + sums[i, 4] * x * y \
            + sums[i, 5] * y * y
    return model


@numba.njit(cache=True, error_model="numpy")
def profile_model(dx: np.ndarray, dy: np.ndarray, variances: np.ndarray, fluxes: np.ndarray, qxx: float,
                  qxy: float, qyy: float, psf_rows: np.ndarray, psf_coefficients: np.ndarray,
                  psf_gaussian_fluxes: np.ndarray, full_psf: bool) -> np.ndarray:
    """Unit-flux profile sum_g fluxes_g N(variances_g Q) of ellipse Q convolved with the PSF model at the
    offsets: with each PSF component's derivative basis (G, Gx, Gy, Gxx, Gxy, Gyy) coefficients when
    `full_psf`, else with its Gaussian part only (see model_flux._model_vector)."""
    n_psf, n_profile = psf_rows.shape[0], variances.size
    n_gauss = n_psf * n_profile
    inverses = np.empty((3, n_gauss))
    polynomial = np.zeros((n_gauss, 6))  # over the monomials 1, dx, dy, dx^2, dx dy, dy^2
    for c in range(n_psf):
        for g in range(n_profile):
            k = c * n_profile + g
            ixx, ixy, iyy, det = _convolved_inverse(variances[g], qxx, qxy, qyy, psf_rows[c])
            inverses[0, k], inverses[1, k], inverses[2, k] = ixx, ixy, iyy
            norm = 1.0 / (2.0 * math.pi * math.sqrt(det))
            if not full_psf:
                polynomial[k, 0] = psf_gaussian_fluxes[c] * fluxes[g] * norm
                continue
            w0, w1, w2, w3, w4, w5 = psf_coefficients[c] * fluxes[g]
            # G, -ux G, -uy G, (ux^2 - ixx) G, (ux uy - ixy) G, (uy^2 - iyy) G with u = C^-1 (dx, dy)
            polynomial[k, 0] = (w0 - w3 * ixx - w4 * ixy - w5 * iyy) * norm
            polynomial[k, 1] = -(w1 * ixx + w2 * ixy) * norm
            polynomial[k, 2] = -(w1 * ixy + w2 * iyy) * norm
            polynomial[k, 3] = (w3 * ixx * ixx + w4 * ixx * ixy + w5 * ixy * ixy) * norm
            polynomial[k, 4] = (2.0 * w3 * ixx * ixy + w4 * (ixx * iyy + ixy * ixy) + 2.0 * w5 * ixy * iyy) * norm
            polynomial[k, 5] = (w3 * ixy * ixy + w4 * ixy * iyy + w5 * iyy * iyy) * norm
    return polynomial_gaussian_sum(dx, dy, inverses, polynomial)


REGION_OK = 0
REGION_LEAVES_IMAGE = 1
REGION_TOO_MANY_BAD = 2
REGION_BAD_VARIANCE = 3
REGION_TOO_LARGE = 4
REGION_DISJOINT = 5  # the ellipses' pixels and the grown footprint are not one 8-connected region


@numba.njit(cache=True, error_model="numpy")
def _single_connected(region: np.ndarray) -> bool:
    """Whether the True pixels of `region` form one 8-connected set (2013: the merged footprint's FootprintSet
    must hold exactly one footprint)."""
    height, width = region.shape
    seen = np.zeros((height, width), dtype=np.bool_)
    stack = np.empty(region.size, dtype=np.int64)
    n_true = 0
    start = -1
    for ry in range(height):
        for rx in range(width):
            if region[ry, rx]:
                n_true += 1
                if start < 0:
                    start = ry * width + rx
    if start < 0:
        return False
    stack[0] = start
    seen[start // width, start % width] = True
    top, reached = 1, 1
    while top:
        top -= 1
        cy, cx = stack[top] // width, stack[top] % width
        for ny in range(max(cy - 1, 0), min(cy + 2, height)):
            for nx in range(max(cx - 1, 0), min(cx + 2, width)):
                if region[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack[top] = ny * width + nx
                    top += 1
                    reached += 1
    return reached == n_true




@numba.njit(cache=True, error_model="numpy")
def _row_span(span: np.ndarray, x: float, y: float, row: int) -> tuple[int, int]:
    """First and last column of the pixels of `row` whose centres are inside the ellipse centred at (x, y),
    in afw's PixelRegion arithmetic (span = det Q, Qyy / det Q, Qxy / Qyy): the row's chord x0 +- half, then
    ceil / floor. A row the ellipse does not reach gives an empty span (last < first), or the one pixel at x0
    when x0 is an integer, as afw did."""
    yt = row - y
    d = span[1] - yt * yt / span[0]
    x0 = x + yt * span[2]
    x1 = x0
    if d > 0.0:
        d = math.sqrt(d) / span[1]
        x0 -= d
        x1 += d
    return math.ceil(x0), math.floor(x1)


@numba.njit(cache=True, error_model="numpy")
def fit_region(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, grown_ys: np.ndarray,
               grown_xs: np.ndarray, x: float, y: float, rows: np.ndarray, spans: np.ndarray, bad_bits: int,
               max_bad_fraction: float) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, float]:
    """The fit pixels of model_flux._fit_pixels: the grown footprint U the ellipses (rows[e] = first, last
    row to scan, spans[e] = `_row_span`'s parameters of the scaled ellipse), in row-major order, minus pixels
    with `bad_bits` set. Returns (status, dx, dy, weighted data, weight)."""
    empty = np.empty(0)
    height, width = image.shape
    y0, x0, y1, x1 = height + width, height + width, -1 - height - width, -1 - height - width
    for e in range(rows.shape[0]):
        for py in range(rows[e, 0], rows[e, 1] + 1):
            first, last = _row_span(spans[e], x, y, py)
            if first <= last:
                if py < 0 or py >= height or first < 0 or last >= width:
                    return REGION_LEAVES_IMAGE, empty, empty, empty, 0.0
                y0, x0, y1, x1 = min(y0, py), min(x0, first), max(y1, py), max(x1, last)
    for i in range(grown_ys.size):
        y0, x0 = min(y0, grown_ys[i]), min(x0, grown_xs[i])
        y1, x1 = max(y1, grown_ys[i]), max(x1, grown_xs[i])
    if y0 < 0 or x0 < 0 or y1 >= height or x1 >= width:
        return REGION_LEAVES_IMAGE, empty, empty, empty, 0.0
    region = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=np.bool_)
    for i in range(grown_ys.size):
        region[grown_ys[i] - y0, grown_xs[i] - x0] = True
    for e in range(rows.shape[0]):
        for py in range(rows[e, 0], rows[e, 1] + 1):
            first, last = _row_span(spans[e], x, y, py)
            for px in range(first, last + 1):
                region[py - y0, px - x0] = True
    if rows.shape[0] and not _single_connected(region):
        return REGION_DISJOINT, empty, empty, empty, 0.0
    n_region = 0
    good_ys = np.empty(region.size, dtype=np.int64)
    good_xs = np.empty(region.size, dtype=np.int64)
    n_good = 0
    for ry in range(region.shape[0]):
        for rx in range(region.shape[1]):
            if region[ry, rx]:
                n_region += 1
                if (mask[ry + y0, rx + x0] & bad_bits) == 0:
                    good_ys[n_good], good_xs[n_good] = ry + y0, rx + x0
                    n_good += 1
    if n_region - n_good > max_bad_fraction * n_region:
        return REGION_TOO_MANY_BAD, empty, empty, empty, 0.0
    total = 0.0
    for i in range(n_good):
        total += np.float64(variance[good_ys[i], good_xs[i]])
    mean_variance = total / n_good if n_good else math.nan
    if not mean_variance > 0:
        return REGION_BAD_VARIANCE, empty, empty, empty, 0.0
    weight = 1.0 / math.sqrt(mean_variance)
    dx, dy, data = np.empty(n_good), np.empty(n_good), np.empty(n_good)
    for i in range(n_good):
        dx[i] = good_xs[i] - x
        dy[i] = good_ys[i] - y
        data[i] = np.float64(image[good_ys[i], good_xs[i]]) * weight
    return REGION_OK, dx, dy, data, weight


@numba.njit(cache=True, error_model="numpy")
def _derivative_basis(dx: np.ndarray, dy: np.ndarray, covariances: np.ndarray, basis: np.ndarray) -> None:
    """Into `basis` (6K, N): the derivative bases (G, dG/dx, dG/dy, d2G/dx2, d2G/dxdy, d2G/dy2) at the offsets
    of the unit-flux Gaussians with `covariances` (K, 2, 2), rows component major (as
    model_flux._GaussianSet.derivative_basis). One component at a time, so that every row is written in order."""
    for c in range(covariances.shape[0]):
        det = covariances[c, 0, 0] * covariances[c, 1, 1] - covariances[c, 0, 1] * covariances[c, 0, 1]
        ixx, ixy, iyy = covariances[c, 1, 1] / det, -covariances[c, 0, 1] / det, covariances[c, 0, 0] / det
        norm = 1.0 / (2.0 * math.pi * math.sqrt(det))
        gaussian, d_x, d_y = basis[6 * c], basis[6 * c + 1], basis[6 * c + 2]
        d_xx, d_xy, d_yy = basis[6 * c + 3], basis[6 * c + 4], basis[6 * c + 5]
        for i in range(dx.size):
            x, y = dx[i], dy[i]
            ux, uy = ixx * x + ixy * y, ixy * x + iyy * y
            g = math.exp(-0.5 * (ux * x + uy * y)) * norm
            gaussian[i] = g
            d_x[i] = -ux * g
            d_y[i] = -uy * g
            d_xx[i] = (ux * ux - ixx) * g
            d_xy[i] = (ux * uy - ixy) * g
            d_yy[i] = (uy * uy - iyy) * g


@numba.njit(cache=True, error_model="numpy")
def derivative_basis_normal_equations(dx: np.ndarray, dy: np.ndarray, data: np.ndarray, covariances: np.ndarray
                                      ) -> tuple[np.ndarray, np.ndarray]:
    """Normal equations (B B', B d) of the least-squares fit of `data` by the derivative bases B
    (`_derivative_basis`) of the unit-flux Gaussians with `covariances` (K, 2, 2)."""
    basis = np.empty((6 * covariances.shape[0], dx.size))
    _derivative_basis(dx, dy, covariances, basis)
    return np.dot(basis, basis.T), np.dot(basis, data)


@numba.njit(cache=True, error_model="numpy")
def grown_footprint(footprint_ys: np.ndarray, footprint_xs: np.ndarray, grow: int) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs), row-major, of the footprint dilated by a disk of radius `grow` (pixels within Euclidean
    distance `grow` of a footprint pixel)."""
    if footprint_ys.size == 0:
        return footprint_ys.copy(), footprint_xs.copy()
    y0, x0 = footprint_ys.min() - grow, footprint_xs.min() - grow
    height = footprint_ys.max() + grow - y0 + 1
    width = footprint_xs.max() + grow - x0 + 1
    region = np.zeros((height, width), dtype=np.bool_)
    for i in range(footprint_ys.size):
        fy, fx = footprint_ys[i] - y0, footprint_xs[i] - x0
        for oy in range(-grow, grow + 1):
            half_width = 0
            while (half_width + 1) ** 2 + oy * oy <= grow * grow:
                half_width += 1
            for ox in range(-half_width, half_width + 1):
                region[fy + oy, fx + ox] = True
    n = 0
    for ry in range(height):
        for rx in range(width):
            n += region[ry, rx]
    ys = np.empty(n, dtype=footprint_ys.dtype)
    xs = np.empty(n, dtype=footprint_xs.dtype)
    n = 0
    for ry in range(height):
        for rx in range(width):
            if region[ry, rx]:
                ys[n], xs[n] = ry + y0, rx + x0
                n += 1
    return ys, xs


# ------------------------------------------------------------------------- whole fits (model_flux's rules)

EPSILON = np.finfo(np.float64).eps
# layout of a profile fit: flux, flux_err, flag, Qxx, Qxy, Qyy, n_pixels, max_iter
FIT_FIELDS = 8


@numba.njit(cache=True, error_model="numpy")
def parameters_from_ellipse(qxx: float, qxy: float, qyy: float) -> tuple[float, float, float]:
    """(eta1, eta2, ln r) of the quadrupole (inverse of `_ellipse`)."""
    r2 = math.sqrt(qxx * qyy - qxy * qxy)
    m00, m01, m11 = qxx / r2, qxy / r2, qyy / r2
    eta = math.acosh(max(0.5 * (m00 + m11), 1.0))
    if eta < 1e-12:
        return 0.0, 0.0, 0.5 * math.log(r2)
    s = math.sinh(eta) / eta
    return 0.5 * (m00 - m11) / s, m01 / s, 0.5 * math.log(r2)


@numba.njit(cache=True, error_model="numpy")
def _trace_radius(qxx: float, qyy: float) -> float:
    return math.sqrt(max(0.5 * (qxx + qyy), 0.0))


@numba.njit(cache=True, error_model="numpy")
def _axis_ratio(qxx: float, qxy: float, qyy: float) -> float:
    half_trace = 0.5 * (qxx + qyy)
    split = math.hypot(0.5 * (qxx - qyy), qxy)
    major, minor = half_trace + split, half_trace - split
    return math.sqrt(minor / major) if major > 0 and minor > 0 else 0.0


@numba.njit(cache=True, error_model="numpy")
def initial_ellipse(mean_variance: float, psf_covariances: np.ndarray, psf_gaussian_fluxes: np.ndarray, ixx: float,
                    ixy: float, iyy: float, shape_ok: bool, min_initial_radius: float, min_axis_ratio: float
                    ) -> tuple[float, float, float]:
    """shape.sdss moments deconvolved by the PSF model (2013 MultiGaussian::deconvolve) for a profile of
    `mean_variance`, or the inner PSF ellipse x min_initial_radius^2 when that is not a valid ellipse."""
    pxx, pxy, pyy = psf_covariances[0, 0, 0], psf_covariances[0, 0, 1], psf_covariances[0, 1, 1]
    factor = min_initial_radius**2
    fallback = (pxx * factor, pxy * factor, pyy * factor)
    mxx, mxy, myy = (ixx, ixy, iyy) if shape_ok else (pxx, pxy, pyy)
    if not (math.isfinite(mxx) and math.isfinite(mxy) and math.isfinite(myy)):
        return fallback
    total = 0.0
    weighted_scale = 0.0
    for c in range(psf_gaussian_fluxes.size):
        total += psf_gaussian_fluxes[c]
        weighted_scale += psf_gaussian_fluxes[c] * (psf_covariances[c, 0, 0] / pxx)
    denominator = total * mean_variance
    qxx = (mxx * total - pxx * weighted_scale) / denominator
    qxy = (mxy * total - pxy * weighted_scale) / denominator
    qyy = (myy * total - pyy * weighted_scale) / denominator
    if qxx < EPSILON or qyy < EPSILON or qxx * qyy - qxy**2 < EPSILON:
        return fallback
    if (_trace_radius(qxx, qyy) < _trace_radius(pxx, pyy) * min_initial_radius
            or _axis_ratio(qxx, qxy, qyy) < min_axis_ratio):
        return fallback
    return qxx, qxy, qyy


@numba.njit(cache=True, error_model="numpy")
def fit_pixels(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, grown_ys: np.ndarray,
               grown_xs: np.ndarray, x: float, y: float, ellipses: np.ndarray, scale: float, bad_bits: int,
               max_bad_fraction: float) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, float]:
    """`fit_region` of the grown footprint U the ellipses (rows Qxx, Qxy, Qyy) x scale; REGION_TOO_LARGE
    when an ellipse is not finite or covers more than ~4e8 pixels."""
    rows = np.empty((ellipses.shape[0], 2), dtype=np.int64)
    spans = np.empty((ellipses.shape[0], 3))
    for e in range(ellipses.shape[0]):
        sxx, sxy, syy = ellipses[e, 0] * scale * scale, ellipses[e, 1] * scale * scale, ellipses[e, 2] * scale * scale
        half_x, half_y = math.sqrt(sxx), math.sqrt(syy)
        if not (math.isfinite(half_x) and math.isfinite(half_y)) or half_x * half_y > 1e8:
            return REGION_TOO_LARGE, np.empty(0), np.empty(0), np.empty(0), 0.0
        # the rows of the ellipse's bounding box expanded to whole pixels (afw Box2I(Box2D, EXPAND))
        rows[e, 0], rows[e, 1] = math.floor(y - half_y + 0.5), math.ceil(y + half_y - 0.5)
        det = sxx * syy - sxy * sxy
        alpha = sxy / syy
        spans[e, 0], spans[e, 1], spans[e, 2] = det, syy / det, alpha if alpha == alpha else 0.0
    return fit_region(image, variance, mask, grown_ys, grown_xs, x, y, rows, spans, bad_bits, max_bad_fraction)


@numba.njit(cache=True, error_model="numpy")
def fit_profile(variances: np.ndarray, fluxes: np.ndarray, psf_rows: np.ndarray, psf_coefficients: np.ndarray,
                psf_gaussian_fluxes: np.ndarray, dx: np.ndarray, dy: np.ndarray, data: np.ndarray, weight: float,
                q0: tuple[float, float, float], tau: float, gtol: float, max_iterations: int,
                min_axis_ratio: float, min_radius: float, full_psf: bool, point_ratio: float = 0.0,
                cost_tolerance: float = 0.0) -> np.ndarray:
    """One profile fit (layout FIT_FIELDS): the LM ellipse fit with the Gaussian part of the PSF model, then
    the flux F = m.d / m.m and error 1/|m| with the full PSF model; flagged when its ellipse's area reaches
    the number of pixels or the flux is not finite. A fit that ran out of iterations is recorded (max_iter)
    but keeps its flux unflagged: 2013 kept the optimizer's iteration limit in a separate flag
    (flags.maxiter), and only the flux flag stopped the combo fit. `point_ratio`, `cost_tolerance`: see
    `fit_ellipse`."""
    n_psf, n_profile = psf_rows.shape[0], variances.size
    n_gauss = n_psf * n_profile
    scales, offsets, mixture = np.empty(n_gauss), np.empty((n_gauss, 3)), np.empty(n_gauss)
    for c in range(n_psf):
        for g in range(n_profile):
            k = c * n_profile + g
            scales[k] = variances[g]
            offsets[k] = psf_rows[c]
            mixture[k] = psf_gaussian_fluxes[c] * fluxes[g]
    eta_max = -math.log(min_axis_ratio)
    lower = np.array([-eta_max, -eta_max, math.log(min_radius)])
    upper = np.array([eta_max, eta_max, MAX_LOG_RADIUS])
    result = np.full(FIT_FIELDS, np.nan)
    result[2], result[6], result[7] = 1.0, dx.size, 0.0
    p0 = np.array(parameters_from_ellipse(q0[0], q0[1], q0[2]))
    status, p, _, max_iter = fit_ellipse(dx, dy, data, weight, scales, offsets, mixture, p0, lower, upper, tau,
                                         gtol, max_iterations, point_ratio, cost_tolerance)
    if status != STATUS_OK:
        return result
    qxx, qxy, qyy = _ellipse(p[0], p[1], p[2])
    model = profile_model(dx, dy, variances, fluxes, qxx, qxy, qyy, psf_rows, psf_coefficients,
                          psf_gaussian_fluxes, full_psf) * weight
    norm2 = np.dot(model, model)
    if not norm2 > 0:
        return result
    flux = np.dot(model, data) / norm2
    det = qxx * qyy - qxy * qxy
    large_area = (math.pi * math.sqrt(det) if det > 0 else 0.0) >= dx.size
    result[0], result[1] = flux, 1.0 / math.sqrt(norm2)
    result[2] = 1.0 if (large_area or not math.isfinite(flux)) else 0.0
    result[3], result[4], result[5], result[7] = qxx, qxy, qyy, 1.0 if max_iter else 0.0
    return result


@numba.njit(cache=True, error_model="numpy")
def combo(models: np.ndarray, data: np.ndarray, exp_flux: float, exp_err: float, dev_flux: float,
          dev_err: float) -> tuple[float, float]:
    """multishapelet.combo (flux, err) from the weighted exp and dev model vectors (2, N) and the data.

    The joint linear fit of both models; 2013 sign rules: both amplitudes >= 0 -> their sum; one negative
    -> the other single-profile result; both -> NaN. When the two models are indistinguishable
    (1 - |cos| < DEGENERATE_COMBO: both fits shrank to the PSF) the joint fit is singular; the 2013 solver then
    returned huge amplitudes of opposite sign and the sign rule kept one single-profile result, so the de
    Vaucouleurs result is taken directly."""
    m00, m01, m11 = np.dot(models[0], models[0]), np.dot(models[0], models[1]), np.dot(models[1], models[1])
    if 1.0 - abs(m01) / (math.sqrt(m00) * math.sqrt(m11)) < DEGENERATE_COMBO:
        return dev_flux, dev_err
    det = m00 * m11 - m01 * m01
    if det == 0.0:
        return math.nan, math.nan
    c00, c01, c11 = m11 / det, -m01 / det, m00 / det
    b0, b1 = np.dot(models[0], data), np.dot(models[1], data)
    a_exp, a_dev = c00 * b0 + c01 * b1, c01 * b0 + c11 * b1
    if a_exp < 0 and a_dev < 0:
        return math.nan, math.nan
    if a_exp < 0:
        return dev_flux, dev_err
    if a_dev < 0:
        return exp_flux, exp_err
    flux = a_exp + a_dev
    err_squared = c00 * (a_exp / flux) + c11 * (a_dev / flux)
    return flux, math.sqrt(err_squared) if err_squared >= 0 else math.nan


@numba.njit(cache=True, error_model="numpy")
def source_model_fluxes(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, footprint_ys: np.ndarray,
                        footprint_xs: np.ndarray, x: float, y: float, ixx: float, ixy: float, iyy: float,
                        shape_ok: bool, profile_variances: np.ndarray, profile_fluxes: np.ndarray,
                        psf_covariances: np.ndarray, psf_coefficients: np.ndarray, psf_gaussian_fluxes: np.ndarray,
                        settings: np.ndarray, bad_bits: int, full_psf: bool) -> np.ndarray:
    """exp and dev fits (2 x FIT_FIELDS) and combo (flux, err, flag) of one source, as model_flux.model_fluxes.

    profile_variances / profile_fluxes: (2, G) for exp, dev; settings: grow_footprint, radius_input_factor,
    max_bad_pixel_fraction, min_initial_radius, min_radius, min_axis_ratio, tau, gradient_tolerance,
    max_iterations, point_ratio, cost_tolerance."""
    grow, scale, max_bad, min_initial_radius = int(settings[0]), settings[1], settings[2], settings[3]
    min_radius, min_axis_ratio, tau, gtol, max_iterations = (settings[4], settings[5], settings[6], settings[7],
                                                             int(settings[8]))
    point_ratio, cost_tolerance = settings[9], settings[10]
    psf_rows = np.empty((psf_covariances.shape[0], 3))
    for c in range(psf_covariances.shape[0]):
        psf_rows[c, 0], psf_rows[c, 1], psf_rows[c, 2] = (psf_covariances[c, 0, 0], psf_covariances[c, 0, 1],
                                                          psf_covariances[c, 1, 1])
    grown_ys, grown_xs = grown_footprint(footprint_ys, footprint_xs, grow)
    out = np.full(2 * FIT_FIELDS + 3, np.nan)
    ellipses = np.empty((2, 3))
    for j in range(2):
        fit = out[j * FIT_FIELDS:(j + 1) * FIT_FIELDS]
        fit[2], fit[6], fit[7] = 1.0, 0.0, 0.0
        mean_variance = np.dot(profile_fluxes[j], profile_variances[j])
        q0 = initial_ellipse(mean_variance, psf_covariances, psf_gaussian_fluxes, ixx, ixy, iyy, shape_ok,
                             min_initial_radius, min_axis_ratio)
        ellipses[0, 0], ellipses[0, 1], ellipses[0, 2] = q0
        status, dx, dy, data, weight = fit_pixels(image, variance, mask, grown_ys, grown_xs, x, y, ellipses[:1],
                                                  scale, bad_bits, max_bad)
        if status != REGION_OK:
            continue
        fit[:] = fit_profile(profile_variances[j], profile_fluxes[j], psf_rows, psf_coefficients,
                             psf_gaussian_fluxes, dx, dy, data, weight, q0, tau, gtol, max_iterations,
                             min_axis_ratio, min_radius, full_psf, point_ratio, cost_tolerance)
    exp_fit, dev_fit = out[:FIT_FIELDS], out[FIT_FIELDS:2 * FIT_FIELDS]
    out[2 * FIT_FIELDS + 2] = 1.0
    if exp_fit[2] or dev_fit[2] or not (math.isfinite(exp_fit[0]) and math.isfinite(dev_fit[0])):
        return out
    ellipses[0], ellipses[1] = exp_fit[3:6], dev_fit[3:6]
    status, dx, dy, data, weight = fit_pixels(image, variance, mask, grown_ys, grown_xs, x, y, ellipses, scale,
                                              bad_bits, max_bad)
    if status != REGION_OK:
        return out
    models = np.empty((2, dx.size))
    for j, fit in enumerate((exp_fit, dev_fit)):
        models[j] = profile_model(dx, dy, profile_variances[j], profile_fluxes[j], fit[3], fit[4], fit[5], psf_rows,
                                  psf_coefficients, psf_gaussian_fluxes, full_psf) * weight
    flux, err = combo(models, data, exp_fit[0], exp_fit[1], dev_fit[0], dev_fit[1])
    out[2 * FIT_FIELDS], out[2 * FIT_FIELDS + 1] = flux, err
    out[2 * FIT_FIELDS + 2] = 0.0 if math.isfinite(flux) else 1.0
    return out


@numba.njit(cache=True, error_model="numpy")
def psf_model_fit(data: np.ndarray, dx: np.ndarray, dy: np.ndarray, radius_ratio: float, peak_ratio: float,
                  initial_radius: float, min_radius: float, min_axis_ratio: float, tau: float, gtol: float,
                  max_iterations: int, full_psf: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """multishapelet.psf of a unit-sum PSF image: the double-Gaussian ellipse fit (outer = radius_ratio x
    inner, outer peak = peak_ratio x inner), then the order-2 expansions of both components by linear least
    squares (or the plain double Gaussian when not `full_psf`). Returns the component covariances (2, 2, 2),
    the derivative-basis coefficients (2, 6) and the order-0 Gauss-Hermite parts as fluxes (2,)."""
    ratio2 = radius_ratio**2
    scales = np.array([1.0, ratio2])
    fluxes = np.array([1.0, peak_ratio * ratio2])
    eta_max = -math.log(min_axis_ratio)
    lower = np.array([-eta_max, -eta_max, math.log(min_radius)])
    upper = np.array([eta_max, eta_max, MAX_LOG_RADIUS])
    _, p, amplitude, _ = fit_ellipse(dx, dy, data, 1.0, scales, np.zeros((2, 3)), fluxes,
                                     np.array([0.0, 0.0, math.log(initial_radius)]), lower, upper, tau, gtol,
                                     max_iterations)
    qxx, qxy, qyy = _ellipse(p[0], p[1], p[2])
    covariances = np.empty((2, 2, 2))
    for c in range(2):
        covariances[c, 0, 0], covariances[c, 0, 1] = scales[c] * qxx, scales[c] * qxy
        covariances[c, 1, 0], covariances[c, 1, 1] = scales[c] * qxy, scales[c] * qyy
    if full_psf:
        normal, rhs = derivative_basis_normal_equations(dx, dy, data, covariances)
        coefficients = np.linalg.solve(normal, rhs).reshape(2, 6)
    else:
        coefficients = np.zeros((2, 6))
        coefficients[:, 0] = amplitude * fluxes
    gaussian_fluxes = np.empty(2)
    for c in range(2):
        cxx, cxy, cyy = covariances[c, 0, 0], covariances[c, 0, 1], covariances[c, 1, 1]
        det = cxx * cyy - cxy * cxy
        second = (coefficients[c, 3] * cyy - coefficients[c, 4] * cxy + coefficients[c, 5] * cxx) / det
        gaussian_fluxes[c] = coefficients[c, 0] - 0.5 * second
    return covariances, coefficients, gaussian_fluxes


@numba.njit(cache=True, error_model="numpy")
def psf_image_pixels(image: np.ndarray, total: float, x: float, y: float
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data, dx, dy) of the square PSF image at (x, y) (centred on the pixel nearest (x, y), as
    `Psf.compute_image`), row-major: the image divided by `total` (its sum) and the offsets of its pixels
    from (x, y)."""
    size = image.shape[0]
    half = size // 2
    shift_x, shift_y = x - math.floor(x + 0.5), y - math.floor(y + 0.5)
    data, dx, dy = np.empty(size * size), np.empty(size * size), np.empty(size * size)
    for row in range(size):
        offset_y = float(row - half) - shift_y
        for column in range(size):
            i = row * size + column
            data[i] = image[row, column] / total
            dx[i] = float(column - half) - shift_x
            dy[i] = offset_y
    return data, dx, dy


@numba.njit(cache=True, error_model="numpy")
def psf_image_model_fit(image: np.ndarray, total: float, x: float, y: float, radius_ratio: float,
                        peak_ratio: float, initial_radius: float, min_radius: float, min_axis_ratio: float, tau: float,
                        gtol: float, max_iterations: int, full_psf: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`psf_model_fit` of the PSF image at (x, y) (`Psf.compute_image`) divided by `total` (its sum)."""
    data, dx, dy = psf_image_pixels(image, total, x, y)
    return psf_model_fit(data, dx, dy, radius_ratio, peak_ratio, initial_radius, min_radius, min_axis_ratio, tau,
                         gtol, max_iterations, full_psf)


@numba.njit(cache=True, error_model="numpy")
def psf_image_combo_amplitudes(image: np.ndarray, x: float, y: float, profile_variances: np.ndarray,
                               profile_fluxes: np.ndarray, ellipses: np.ndarray, psf_covariances: np.ndarray,
                               psf_coefficients: np.ndarray, psf_gaussian_fluxes: np.ndarray, full_psf: bool
                               ) -> tuple[float, float]:
    """Amplitudes (exp, dev) of the 2013 combo PSF-factor fit: the PSF image at (x, y) (`Psf.compute_image`,
    unweighted) fitted by the two PSF-convolved unit-flux profiles of the ellipses (2, 3) — in 2013 the
    source's own fitted exp and dev ellipses, which FitProfile stored in psffactor.ellipse and FitCombo read
    back — solved as afw's LeastSquares (normal equations, eigenvalues below epsilon x the largest dropped)."""
    psf_rows = np.empty((psf_covariances.shape[0], 3))
    for c in range(psf_covariances.shape[0]):
        psf_rows[c, 0], psf_rows[c, 1], psf_rows[c, 2] = (psf_covariances[c, 0, 0], psf_covariances[c, 0, 1],
                                                          psf_covariances[c, 1, 1])
    data, dx, dy = psf_image_pixels(image, 1.0, x, y)
    models = np.empty((2, dx.size))
    for j in range(2):
        models[j] = profile_model(dx, dy, profile_variances[j], profile_fluxes[j], ellipses[j, 0], ellipses[j, 1],
                                  ellipses[j, 2], psf_rows, psf_coefficients, psf_gaussian_fluxes, full_psf)
    fisher = np.empty((2, 2))
    fisher[0, 0] = np.dot(models[0], models[0])
    fisher[0, 1] = fisher[1, 0] = np.dot(models[0], models[1])
    fisher[1, 1] = np.dot(models[1], models[1])
    rhs = np.array([np.dot(models[0], data), np.dot(models[1], data)])
    values, vectors = np.linalg.eigh(fisher)
    solution = np.zeros(2)
    for k in range(2):
        if values[k] >= 2.220446049250313e-16 * values[1]:
            projection = (vectors[0, k] * rhs[0] + vectors[1, k] * rhs[1]) / values[k]
            solution[0] += vectors[0, k] * projection
            solution[1] += vectors[1, k] * projection
    return solution[0], solution[1]
