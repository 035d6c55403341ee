"""Compiled (numba) centroids of `centroid`: centroid.sdss and centroid.gaussian of one source or many.

* `sdss_centroid_kernel` runs the binning loop of `centroid.sdss_centroid` (measurement-spec.md §3): binned
  stamp, PSF smoothing of the central 3x3 (float64 sums rounded to float32, as afw did) and the 2013 peak
  analysis in scalar float64 arithmetic, operation for operation as the former numpy code;
  `sdss_centroid_sources` runs it for every source of an image, each with its own footprint put back.
* `gaussian_centroid_sources` runs `centroid.gaussian_centroid` (first guess and the CURFIT iteration) for
  every source of an image, each with its own footprint put back into the noise-replaced image; it differs
  from the scalar code only in rounding (the normal-equation sums and the 5x5 LU solve are summed in
  another order than BLAS / LAPACK).

Imported lazily (numba's import costs ~0.3 s, which `process-ccd --help` should not pay); `cache=True` keeps
the compiled code beside this file between runs.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from processccd.meas.centroid_constants import (
    BAD_A,
    BAD_WIDTH,
    DIAGONAL,
    FIT_BOX,
    FREE_ITERATIONS,
    LAMBDA_DIVISOR,
    LAMBDA_OK,
    LAMBDA_START,
    LOST_DISTANCE,
    MAX_ITERATIONS,
    MAX_RADIUS,
    MIN_RADIUS,
    MIN_SIGMA,
    N_PARAMS,
    RATIO_MIN,
    RETRIES,
    SINGULAR,
    TOO_CLOSE,
    TOO_FEW,
)

KERNEL_HALF = 15  # the PSF kernel is 31x31 with its centre at index 15
BIN_MAX = 16  # largest binning factor tried (binmax)
WIDTH_FACTOR = 1.5  # wfac: accepted (width, offset)^2 < wfac (1 + sigma_s^2) bin^2
QUARTIC_AMPLITUDE = 1.33  # amplitude of the quartic correction (AMPAST4)
MAX_FIRST_GUESS = 10.0  # |s/d2| above which the object has an almost vanishing second derivative
FLOAT32_TINY = float(np.finfo(np.float32).tiny)
OK, LEAVES_IMAGE, NOT_A_MAXIMUM, VANISHING_CURVATURE = 0, 1, 2, 3  # outcomes of `sdss_centroid_kernel`


@numba.njit(cache=True, error_model="numpy")
def _smoothed_centre(image: np.ndarray, variance: np.ndarray, x_peak: int, y_peak: int, bin_x: int, bin_y: int,
                     kernel: np.ndarray, neff: float, smoothed: np.ndarray) -> bool:
    """The 3x3 centre of the binned, PSF-smoothed stamp and of its variance, as float32 values in
    smoothed[0] and smoothed[1] (see `centroid.sdss_centroid`); False if the stamp leaves the image.

    The stamp is image[Y - bY (2+15) : + bY (3+31+1), X - bX (2+15) : + bX (3+31+1)], binned by its mean
    (variance: sum / n^2) to 35x35 and rounded to float32; the correlation with the kernel (variance: the
    squared kernel, times bX bY neff) puts output pixel i on binned pixels i + 1 .. i + 31.
    """
    half = KERNEL_HALF + 2
    size = 2 * KERNEL_HALF + 5
    x0 = x_peak - bin_x * half
    y0 = y_peak - bin_y * half
    height, width = image.shape
    if x0 < 0 or y0 < 0 or x0 + bin_x * size > width or y0 + bin_y * size > height:
        return False
    inner = size - 2
    planes = np.empty((2, inner, inner))
    n_binned = bin_x * bin_y
    for r in range(inner):
        for c in range(inner):
            top = y0 + (r + 1) * bin_y
            left = x0 + (c + 1) * bin_x
            if n_binned == 1:
                planes[0, r, c] = image[top, left]
                planes[1, r, c] = variance[top, left]
                continue
            total = total_var = 0.0
            for a in range(bin_y):
                for b in range(bin_x):
                    total += np.float64(image[top + a, left + b])
                    total_var += np.float64(variance[top + a, left + b])
            planes[0, r, c] = np.float32(total / n_binned)
            planes[1, r, c] = np.float32(total_var / (n_binned * n_binned))
    n_ker = 2 * KERNEL_HALF + 1
    for i in range(3):
        for j in range(3):
            value = value_var = 0.0
            for m in range(n_ker):
                column = column_var = 0.0
                for k in range(n_ker):
                    weight = kernel[k, m]
                    column += weight * planes[0, i + k, j + m]
                    column_var += weight * weight * planes[1, i + k, j + m]
                value += column
                value_var += column_var
            smoothed[0, i, j] = np.float32(value)
            smoothed[1, i, j] = np.float32(value_var * (bin_x * bin_y * neff))
    return True


@numba.njit(cache=True, error_model="numpy")
def _quartic_maximum(v_minus: float, v_centre: float, v_plus: float) -> tuple[bool, float]:
    """(valid, position) of the maximum of three values at -1, 0, 1 with the quartic correction."""
    s_plus = v_centre - v_plus
    s_minus = v_centre - v_minus
    d2 = s_plus + s_minus
    if d2 <= 0.0 or v_centre <= 0.0:
        return False, 0.0
    slope = 0.5 * (v_plus - v_minus)
    m = slope / d2 * (1.0 + QUARTIC_AMPLITUDE * s_plus * s_minus / (d2 * v_centre))
    return abs(m) < 1.0, m


@numba.njit(cache=True, error_model="numpy")
def _position_variance(sky_var: float, source_var: float, peak: float, slope: float, curvature: float,
                       sigma: float, quartic: bool) -> float:
    """Variance of the centre along one axis from the slope/curvature noise of the smoothed image."""
    k = QUARTIC_AMPLITUDE if quartic else 0.0
    if abs(peak) < FLOAT32_TINY or abs(curvature) < FLOAT32_TINY:
        return 1e6  # error of 1e3 px
    sigma2 = sigma * sigma
    e1 = math.exp(-1.0 / sigma2)
    e3 = math.exp(-1.0 / (3.0 * sigma2))
    e4 = math.exp(-1.0 / (4.0 * sigma2))
    slope_var = sky_var / (8.0 * math.pi * sigma2) * (1.0 - e1) + source_var / (12.0 * math.pi * sigma2) * (e3 - e1)
    curvature_var = sky_var / (2.0 * math.pi * sigma2) * (3.0 - 4.0 * e4 + e1) + source_var / (
        3.0 * math.pi * sigma2
    ) * (2.0 - 3.0 * e3 + e1)
    d = curvature
    s = slope
    slope_term = 1.0 / d + k / (4.0 * peak) * (1.0 - 12.0 * s * s / (d * d))
    curvature_term = s / (d * d) - k / (4.0 * peak) * 8.0 * s * s / (d * d * d)
    return slope_var * (slope_term * slope_term) + curvature_var * (curvature_term * curvature_term)


@numba.njit(cache=True, error_model="numpy")
def _analyse_centre(v: np.ndarray, w: np.ndarray, psf_sigma: float, estimate: np.ndarray) -> int:
    """Quadratic + quartic peak position, widths and errors from the 3x3 smoothed values v [y, x] and their
    variances w, into estimate = (dx, dy, size_x2, size_y2, err_x, err_y) in binned pixels from the centre;
    returns OK, NOT_A_MAXIMUM or VANISHING_CURVATURE."""
    centre = v[1, 1]
    d2x = 2.0 * centre - v[1, 0] - v[1, 2]
    d2y = 2.0 * centre - v[0, 1] - v[2, 1]
    sx = 0.5 * (v[1, 2] - v[1, 0])
    sy = 0.5 * (v[2, 1] - v[0, 1])
    if d2x <= 0.0 or d2y <= 0.0:
        return NOT_A_MAXIMUM
    dx0 = sx / d2x
    dy0 = sy / d2y
    if abs(dx0) > MAX_FIRST_GUESS or abs(dy0) > MAX_FIRST_GUESS:
        return VANISHING_CURVATURE
    peak = abs(centre + 0.5 * (sx * dx0 + sy * dy0))

    ok0x, m0x = _quartic_maximum(v[0, 0], v[0, 1], v[0, 2])
    ok1x, m1x = _quartic_maximum(v[1, 0], v[1, 1], v[1, 2])
    ok2x, m2x = _quartic_maximum(v[2, 0], v[2, 1], v[2, 2])
    ok0y, m0y = _quartic_maximum(v[0, 0], v[1, 0], v[2, 0])
    ok1y, m1y = _quartic_maximum(v[0, 1], v[1, 1], v[2, 1])
    ok2y, m2y = _quartic_maximum(v[0, 2], v[1, 2], v[2, 2])
    quartic = ok0x and ok1x and ok2x and ok0y and ok1y and ok2y
    if quartic:
        smx = 0.5 * (m2x - m0x)
        smy = 0.5 * (m2y - m0y)
        dm2x = m1x - 0.5 * (m0x + m2x)
        dm2y = m1y - 0.5 * (m0y + m2y)
        dx1 = m1x + dy0 * (smx - dy0 * dm2x)
        dy1 = m1y + dx0 * (smy - dx0 * dm2y)
        xc = m1x + dy1 * (smx - dy1 * dm2x)
        yc = m1y + dx1 * (smy - dx1 * dm2y)
        sigma_x2 = peak / d2x - (1.0 + 6.0 * dx0 * dx0) / 4.0
        sigma_y2 = peak / d2y - (1.0 + 6.0 * dy0 * dy0) / 4.0
    else:
        xc, yc = dx0, dy0
        sigma_x2 = peak / d2x
        sigma_y2 = peak / d2y
    # Object size^2 with the smoothing removed, floored at the smoothing width^2.
    smoothing2 = psf_sigma * psf_sigma
    tau_x2 = max(sigma_x2 - smoothing2, smoothing2)
    tau_y2 = max(sigma_y2 - smoothing2, smoothing2)

    sky_var = (w[0, 0] + w[0, 1] + w[0, 2] + w[1, 0] + w[1, 2] + w[2, 0] + w[2, 1] + w[2, 2]) / 8.0
    source_var = w[1, 1]
    var_x = _position_variance(sky_var, source_var, peak, sx, d2x, abs(psf_sigma), quartic)
    var_y = _position_variance(sky_var, source_var, peak, sy, d2y, abs(psf_sigma), quartic)
    estimate[0], estimate[1], estimate[2], estimate[3] = xc, yc, tau_x2, tau_y2
    estimate[4] = math.sqrt(var_x) if var_x >= 0.0 else math.nan
    estimate[5] = math.sqrt(var_y) if var_y >= 0.0 else math.nan
    return OK


@numba.njit(cache=True, error_model="numpy")
def sdss_centroid_kernel(image: np.ndarray, variance: np.ndarray, x_peak: int, y_peak: int, kernel: np.ndarray,
                         neff: float, psf_sigma: float, result: np.ndarray) -> int:
    """centroid.sdss at the peak pixel with the unit-sum 31x31 PSF `kernel` (neff = (sum k)^2 / sum k^2):
    result = (x, y, err_xx, err_yy) when OK, else the outcome that made it fail."""
    smoothed = np.empty((2, 3, 3))
    estimate = np.empty(6)
    width_limit = WIDTH_FACTOR * (1.0 + psf_sigma * psf_sigma)
    bin_x = bin_y = 1
    binsize = 1
    while True:
        if not _smoothed_centre(image, variance, x_peak, y_peak, bin_x, bin_y, kernel, neff, smoothed):
            return LEAVES_IMAGE
        outcome = _analyse_centre(smoothed[0], smoothed[1], psf_sigma, estimate)
        if outcome != OK:
            return outcome
        # Dilate from the lower-left corner of the central binned pixel (bin = 1 leaves it unchanged).
        dx = (estimate[0] + 0.5) * bin_x - 0.5
        dy = (estimate[1] + 0.5) * bin_y - 0.5
        err_x = estimate[4] * bin_x
        err_y = estimate[5] * bin_y
        size_x2 = estimate[2] * bin_x * bin_x
        size_y2 = estimate[3] * bin_y * bin_y
        limit_x = width_limit * bin_x * bin_x
        limit_y = width_limit * bin_y * bin_y
        bad_x = size_x2 >= limit_x or dx * dx >= limit_x
        bad_y = size_y2 >= limit_y or dy * dy >= limit_y
        binsize *= 2
        if not (bad_x or bad_y) or binsize > BIN_MAX:
            break
        if bad_x:
            bin_x *= 2
        if bad_y:
            bin_y *= 2
    result[0], result[1] = x_peak + dx, y_peak + dy
    result[2], result[3] = err_x * err_x, err_y * err_y
    return OK


@numba.njit(cache=True, error_model="numpy")
def _put_back_footprint(image: np.ndarray, ys: np.ndarray, xs: np.ndarray, deltas: np.ndarray, first: int,
                        end: int) -> np.ndarray:
    """Raise the footprint pixels (ys, xs)[first:end] of the noise-replaced `image` by their `deltas`
    (original - noise), which restores their original values (exactly unless an original is ~2^29 times smaller
    than its noise); returns the noise values, for `_restore_noise`."""
    noise = np.empty(end - first, dtype=image.dtype)
    for k in range(first, end):
        noise[k - first] = image[ys[k], xs[k]]
        image[ys[k], xs[k]] = noise[k - first] + deltas[k]
    return noise


@numba.njit(cache=True, error_model="numpy")
def _restore_noise(image: np.ndarray, ys: np.ndarray, xs: np.ndarray, first: int, noise: np.ndarray) -> None:
    """Undo `_put_back_footprint`: the pixels (ys, xs)[first:first + noise.size] get their `noise` again."""
    for k in range(noise.size):
        image[ys[first + k], xs[first + k]] = noise[k]


@numba.njit(cache=True, error_model="numpy")
def sdss_centroid_sources(image: np.ndarray, variance: np.ndarray, sources: np.ndarray, x_peak: np.ndarray,
                          y_peak: np.ndarray, kernels: np.ndarray, neffs: np.ndarray, psf_sigmas: np.ndarray,
                          starts: np.ndarray, ys: np.ndarray, xs: np.ndarray, deltas: np.ndarray, results: np.ndarray,
                          outcomes: np.ndarray) -> None:
    """`sdss_centroid_kernel` of the sources i = sources[n] at their peaks (x_peak[i], y_peak[i]) with kernels[n],
    neffs[n] and psf_sigmas[i] into results[i] and outcomes[i], each with its own footprint pixels
    (ys, xs)[starts[i]:starts[i + 1]] raised by `deltas` (original - noise) meanwhile."""
    for n in range(sources.size):
        i = sources[n]
        noise = _put_back_footprint(image, ys, xs, deltas, starts[i], starts[i + 1])
        outcomes[i] = sdss_centroid_kernel(image, variance, x_peak[i], y_peak[i], kernels[n], neffs[n],
                                           psf_sigmas[i], results[i])
        _restore_noise(image, ys, xs, starts[i], noise)


# centroid.gaussian: the CURFIT Levenberg-Marquardt fit of a circular Gaussian (see `centroid.gaussian_centroid`)
BROKEN = 1  # where the numpy code raises or may raise (non-finite sub-box limits, a zero rms)
FITTED, NO_FIT, FALLBACK = 0, 1, 2  # outcomes of `gaussian_centroid_kernel`


@numba.njit(cache=True, error_model="numpy")
def _normal_equations(box: np.ndarray, x_first: float, y_first: float, params: np.ndarray, alpha: np.ndarray,
                      beta: np.ndarray, state: np.ndarray) -> int:
    """alpha, beta and state[0] = chi^2, state[1] = pixels used at `params` (pixels with MIN_RADIUS <=
    r/s <= MAX_RADIUS of the current centre); returns the status (0, TOO_FEW, BAD_A, BAD_WIDTH or BROKEN)."""
    a, b, x0, y0, s = params[0], params[1], params[2], params[3], params[4]
    if a <= 0.0:
        return BAD_A
    if s <= 0.0:
        return BAD_WIDTH
    height, width = box.shape
    reach = MAX_RADIUS * s
    limits = (x0 - reach - x_first, x0 + reach - x_first, y0 - reach - y_first, y0 + reach - y_first)
    for limit in limits:
        if not math.isfinite(limit):
            return BROKEN
    c0 = int(min(max(math.floor(limits[0]), 0.0), width))
    c1 = max(int(min(math.ceil(limits[1]) + 1.0, width)), c0)
    r0 = int(min(max(math.floor(limits[2]), 0.0), height))
    r1 = max(int(min(math.ceil(limits[3]) + 1.0, height)), r0)
    inv_s = 1.0 / s
    a_inv_s = a * inv_s
    rows = np.zeros(N_PARAMS + 1)
    products = np.zeros((N_PARAMS + 1, N_PARAMS + 1))
    n_used = 0
    for r in range(r0, r1):
        dy = ((y_first + r) - y0) * inv_s
        for c in range(c0, c1):
            dx = ((x_first + c) - x0) * inv_s
            d2 = dy * dy + dx * dx
            if not (d2 >= MIN_RADIUS * MIN_RADIUS and d2 <= MAX_RADIUS * MAX_RADIUS):
                continue
            n_used += 1
            arg = math.exp(-0.5 * d2)
            a_arg_s = arg * a_inv_s
            rows[0] = arg
            rows[1] = 1.0
            rows[2] = a_arg_s * dx
            rows[3] = a_arg_s * dy
            rows[4] = a_arg_s * d2
            rows[5] = (box[r, c] - b) - a * arg
            for i in range(N_PARAMS + 1):
                for j in range(i + 1):
                    products[i, j] += rows[i] * rows[j]
    for i in range(N_PARAMS):
        for j in range(i + 1):
            alpha[i, j] = alpha[j, i] = products[i, j]
        beta[i] = products[N_PARAMS, i]
    state[0] = products[N_PARAMS, N_PARAMS]
    state[1] = n_used
    return TOO_FEW if n_used <= N_PARAMS + 1 else 0


@numba.njit(cache=True, error_model="numpy")
def _solve(matrix: np.ndarray, rhs: np.ndarray) -> bool:
    """Solve matrix x = rhs in place (rhs becomes x) by LU with partial pivoting; False if a pivot is 0."""
    n = rhs.size
    for k in range(n):
        pivot = k
        for i in range(k + 1, n):
            if abs(matrix[i, k]) > abs(matrix[pivot, k]):
                pivot = i
        if matrix[pivot, k] == 0.0:
            return False
        if pivot != k:
            for j in range(n):
                matrix[k, j], matrix[pivot, j] = matrix[pivot, j], matrix[k, j]
            rhs[k], rhs[pivot] = rhs[pivot], rhs[k]
        for i in range(k + 1, n):
            factor = matrix[i, k] / matrix[k, k]
            for j in range(k + 1, n):
                matrix[i, j] -= factor * matrix[k, j]
            rhs[i] -= factor * rhs[k]
    for k in range(n - 1, -1, -1):
        total = rhs[k]
        for j in range(k + 1, n):
            total -= matrix[k, j] * rhs[j]
        rhs[k] = total / matrix[k, k]
    return True


@numba.njit(cache=True, error_model="numpy")
def _half_maximum_width(profile: np.ndarray, centre: int, lo: int, hi: int, level: float) -> float:
    """`centroid._half_maximum_width`: distance between the `level` crossings on either side of `centre`."""
    upper = float(hi - 1)
    for k in range(centre + 1, hi):
        if profile[k] <= level:
            x = k - 1
            step = np.float64(profile[x + 1]) - np.float64(profile[x])
            upper = x + (0.5 if step == 0.0 else (level - np.float64(profile[x])) / step)
            break
    lower = float(lo)
    for k in range(centre - 1, -1, -1):
        if profile[k] <= level:
            x = k + 1
            step = np.float64(profile[x - 1]) - np.float64(profile[x])
            lower = x - (0.5 if step == 0.0 else (level - np.float64(profile[x])) / step)
            break
    return upper - lower


@numba.njit(cache=True, error_model="numpy")
def _fit(box: np.ndarray, x_first: float, y_first: float, start: np.ndarray, width: int, height: int,
         params: np.ndarray) -> int:
    """The 2013 CURFIT iteration from `start` into `params`; returns 0, or BROKEN where the numpy code must
    decide (it may raise)."""
    params[:] = start
    alpha, beta, state = np.zeros((N_PARAMS, N_PARAMS)), np.zeros(N_PARAMS), np.zeros(2)
    status = _normal_equations(box, x_first, y_first, params, alpha, beta, state)
    if status == BROKEN:
        return BROKEN
    if status != 0:
        return 0
    n_ref = state[1]
    rms = math.sqrt(state[0] / (n_ref - (N_PARAMS + 1)))
    flamd = LAMBDA_START
    iteration = 0
    trial = np.empty(N_PARAMS)
    scaled = np.empty((N_PARAMS, N_PARAMS))
    new_alpha, new_beta, new_state = np.empty((N_PARAMS, N_PARAMS)), np.empty(N_PARAMS), np.empty(2)
    while True:
        # one CURFIT call: up to RETRIES trial steps, lambda / 5 on the first improvement, x 3 on each failure
        rms_before = rms
        for _ in range(RETRIES):
            diagonal_zero = False
            for i in range(N_PARAMS):
                if alpha[i, i] == 0.0:
                    diagonal_zero = True
            if diagonal_zero:
                status = DIAGONAL
                break
            for i in range(N_PARAMS):
                for j in range(N_PARAMS):
                    scaled[i, j] = alpha[i, j] / (math.sqrt(alpha[i, i]) * math.sqrt(alpha[j, j]))
                scaled[i, i] = 1.0 + flamd
                trial[i] = beta[i] / math.sqrt(alpha[i, i])
            if not _solve(scaled, trial):
                status = SINGULAR
                break
            for i in range(N_PARAMS):
                trial[i] = params[i] + trial[i] / math.sqrt(alpha[i, i])
            new_alpha[:] = alpha
            new_beta[:] = beta
            new_state[:] = state
            status = _normal_equations(box, x_first, y_first, trial, new_alpha, new_beta, new_state)
            if status == BROKEN:
                return BROKEN
            new_rms = math.sqrt(new_state[0] / (n_ref - (N_PARAMS + 1)))
            if status == TOO_FEW or (status == 0 and new_rms <= rms_before):
                params[:] = trial
                alpha[:] = new_alpha
                beta[:] = new_beta
                state[:] = new_state
                if status == 0:
                    rms = new_rms
                    flamd /= LAMBDA_DIVISOR
                break
            flamd *= 3.0
            state[1] = new_state[1]  # the pixel count of the rejected step is kept (as in 2013)
        # the 2013 stopping tests (all skipped up to iteration FREE_ITERATIONS)
        if iteration > FREE_ITERATIONS:
            x0, y0, s = params[2], params[3], params[4]
            if rms == 0.0:
                return BROKEN  # the numpy code may divide by the rms below (left to it: it may raise)
            if (flamd < LAMBDA_OK or status < 0 or state[1] < N_PARAMS + 1 or state[0] <= 0.0
                    or x0 < 0.0 or x0 > width or y0 < 0.0 or y0 > height or s < 0.0
                    or abs(start[2] - x0) > LOST_DISTANCE or abs(start[3] - y0) > LOST_DISTANCE
                    or (rms - rms_before) / rms > RATIO_MIN or iteration > MAX_ITERATIONS):
                return 0
        iteration += 1
        status = 0


@numba.njit(cache=True, error_model="numpy")
def gaussian_centroid_kernel(image: np.ndarray, x: float, y: float, result: np.ndarray) -> int:
    """`centroid.gaussian_centroid` at (x, y): result = (x0, y0) when FITTED; NO_FIT for a start pixel too
    close to the edge or a non-positive fitted peak; FALLBACK where the numpy code must decide (a non-finite
    centre or fit box, or a fit it would abort with an exception)."""
    height, width = image.shape
    if not (math.isfinite(x) and math.isfinite(y)) or abs(x) > 2.0**62 or abs(y) > 2.0**62:
        return FALLBACK
    ix = int(math.floor(x + 0.5))
    iy = int(math.floor(y + 0.5))
    if ix < TOO_CLOSE or width - ix < TOO_CLOSE or iy < TOO_CLOSE or height - iy < TOO_CLOSE:
        return NO_FIT
    xl = max(ix - FIT_BOX // 2, 0)
    yl = max(iy - FIT_BOX // 2, 0)
    xh = min(xl + FIT_BOX, width)
    yh = min(yl + FIT_BOX, height)
    box = np.empty((yh - yl, xh - xl))
    sky = math.inf
    for r in range(yh - yl):
        for c in range(xh - xl):
            value = np.float64(image[yl + r, xl + c])
            if not math.isfinite(value):
                return FALLBACK  # numpy's min / argmax treat NaN their own way
            box[r, c] = value
            sky = min(sky, value)
    # Peak: the brightest pixel within LOST_DISTANCE of the start (the start pixel wins ties).
    best_value = -math.inf
    best_r = best_c = -1
    for r in range(yh - yl):
        for c in range(xh - xl):
            ddx, ddy = xl + c - ix, yl + r - iy
            if ddx * ddx + ddy * ddy <= LOST_DISTANCE**2 and box[r, c] > best_value:
                best_value, best_r, best_c = box[r, c], r, c
    px, py = ix, iy
    if best_value > np.float64(image[iy, ix]):
        px, py = xl + best_c, yl + best_r
    peak_value = np.float64(image[py, px])
    level = 0.5 * (peak_value + sky)
    fwhm_x = _half_maximum_width(image[py, :xh], px, xl, xh, level)
    fwhm_y = _half_maximum_width(image[:yh, px], py, yl, yh, level)
    sigma = max(0.5 * (fwhm_x + fwhm_y) / 2.354, MIN_SIGMA)
    start = np.array([peak_value - sky, sky, float(ix), float(iy), sigma])
    params = np.empty(N_PARAMS)
    if _fit(box, float(xl), float(yl), start, width, height, params) == BROKEN:
        return FALLBACK
    if params[0] <= 0.0:
        return NO_FIT
    result[0], result[1] = params[2], params[3]
    return FITTED


@numba.njit(cache=True, error_model="numpy")
def gaussian_centroid_sources(image: np.ndarray, x: np.ndarray, y: np.ndarray, starts: np.ndarray, ys: np.ndarray,
                              xs: np.ndarray, deltas: np.ndarray, results: np.ndarray, outcomes: np.ndarray) -> None:
    """`gaussian_centroid_kernel` of every source i at (x[i], y[i]) into results[i] and outcomes[i], with its own
    footprint pixels (ys, xs)[starts[i]:starts[i + 1]] raised by `deltas` (original - noise) meanwhile."""
    for i in range(x.size):
        noise = _put_back_footprint(image, ys, xs, deltas, starts[i], starts[i + 1])
        outcomes[i] = gaussian_centroid_kernel(image, x[i], y[i], results[i])
        _restore_noise(image, ys, xs, starts[i], noise)
