"""Centroids: centroid.sdss and centroid.gaussian as computed by the LSST 2013 stack (measurement-spec.md §3).

Both work on one source at a time over a small stamp; coordinates are 0-based pixel centres, arrays
are indexed [y, x].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.linalg import lapack

from processccd.psf import Psf

# ---------------------------------------------------------------------------------------------------------
# centroid.sdss
# ---------------------------------------------------------------------------------------------------------

KERNEL_HALF = 15  # the PSF kernel is 31×31 with its centre at index 15
BIN_MAX = 16  # largest binning factor tried (binmax)
WIDTH_FACTOR = 1.5  # wfac: accepted (width, offset)² < wfac·(1 + σs²)·bin²
QUARTIC_AMPLITUDE = 1.33  # amplitude of the quartic correction (AMPAST4)
MAX_FIRST_GUESS = 10.0  # |s/d2| above which the object has an almost vanishing second derivative


class CentroidError(Exception):
    """The SDSS centroid cannot be measured (stamp leaves the image, not a maximum, ...)."""


@dataclass(frozen=True)
class SdssCentroidResult:
    """centroid.sdss: position (px) and the variances of x and y (px²); flag set on failure."""

    x: float
    y: float
    err_xx: float
    err_yy: float
    flag: bool


@dataclass(frozen=True)
class _CentreEstimate:
    """Result of the 3×3 analysis of the smoothed image, in (binned) pixels relative to its centre."""

    dx: float
    dy: float
    size_x2: float
    size_y2: float
    err_x: float
    err_y: float


def _smoothed_centre(
    image: np.ndarray,
    variance: np.ndarray,
    x_peak: int,
    y_peak: int,
    bin_x: int,
    bin_y: int,
    kernels_t: np.ndarray,
    neff: float,
) -> tuple[list[list[float]], list[list[float]]]:
    """The 3×3 centre of the binned, PSF-smoothed stamp and its per-pixel variance (float32, like afw).

    The stamp is image[Y − bY(2+15) : + bY(3+31+1), X − bX(2+15) : + bX(3+31+1)], binned by its mean
    (variance: Σvar/n²) to 35×35; afw's convolve (a correlation, kernel centre at index 15, only the
    valid region) puts output pixel i on input pixels i−15..i+15, so the stamp centre (index 17, which is
    pixel X for bX = 1) needs input indices 1..33; the variance plane is correlated with the squared
    kernel and multiplied by bX·bY·neff. `kernels_t` holds the transposed kernel and squared kernel,
    shape (2, 1, 31, 31).
    """
    half = KERNEL_HALF + 2
    size = 2 * KERNEL_HALF + 5
    x0 = x_peak - bin_x * half
    y0 = y_peak - bin_y * half
    height, width = image.shape
    if x0 < 0 or y0 < 0 or x0 + bin_x * size > width or y0 + bin_y * size > height:
        raise CentroidError(f"the {bin_x}x{bin_y}-binned stamp at ({x_peak}, {y_peak}) leaves the image")
    planes = np.empty((2, size - 2, size - 2))  # binned image and variance, input indices 1..33
    if bin_x == 1 and bin_y == 1:
        planes[0] = image[y0 + 1 : y0 + size - 1, x0 + 1 : x0 + size - 1]
        planes[1] = variance[y0 + 1 : y0 + size - 1, x0 + 1 : x0 + size - 1]
    else:
        n_binned = bin_x * bin_y
        for plane, values, norm in ((0, image, n_binned), (1, variance, n_binned * n_binned)):
            stamp = values[y0 : y0 + bin_y * size, x0 : x0 + bin_x * size].astype(np.float64)
            binned = stamp.reshape(size, bin_y, size, bin_x).sum(axis=(1, 3))[1:-1, 1:-1] / norm
            planes[plane] = binned.astype(np.float32)
    # Correlate both planes with their kernels on the central 3×3 only: first along rows with a matmul
    # over row windows, then sum the shifted diagonals along columns (strided views, no copies).
    n_out = 3
    n_ker = 2 * KERNEL_HALF + 1
    s0, s1, s2 = planes.strides
    row_windows = np.ndarray((2, n_out, n_ker, size - 2), np.float64, planes, 0, (s0, s1, s1, s2))
    partial = np.matmul(kernels_t, row_windows)  # [plane, i, l, m] = Σ_k K[k, l]·P[i + k, m]
    t0, t1, t2, t3 = partial.strides
    diagonals = np.ndarray((2, n_out, n_out, n_ker), np.float64, partial, 0, (t0, t1, t3, t2 + t3))
    smoothed = diagonals.sum(axis=-1)
    smoothed[1] *= bin_x * bin_y * neff
    smoothed = smoothed.astype(np.float32)
    return smoothed[0].tolist(), smoothed[1].tolist()


def _quartic_maximum(v_minus: float, v_centre: float, v_plus: float) -> float | None:
    """Position of the maximum of three values at −1, 0, 1 with the quartic correction; None if invalid."""
    s_plus = v_centre - v_plus
    s_minus = v_centre - v_minus
    d2 = s_plus + s_minus
    if d2 <= 0.0 or v_centre <= 0.0:
        return None
    slope = 0.5 * (v_plus - v_minus)
    m = slope / d2 * (1.0 + QUARTIC_AMPLITUDE * s_plus * s_minus / (d2 * v_centre))
    return m if abs(m) < 1.0 else None


def _position_variance(
    sky_var: float,
    source_var: float,
    peak: float,
    slope: float,
    curvature: float,
    sigma: float,
    quartic: bool,
) -> float:
    """Variance of the centre along one axis from the slope/curvature noise of the smoothed image."""
    k = QUARTIC_AMPLITUDE if quartic else 0.0
    if abs(peak) < np.finfo(np.float32).tiny or abs(curvature) < np.finfo(np.float32).tiny:
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
    return (
        slope_var * (1.0 / d + k / (4.0 * peak) * (1.0 - 12.0 * s * s / (d * d))) ** 2
        + curvature_var * (s / (d * d) - k / (4.0 * peak) * 8.0 * s * s / (d * d * d)) ** 2
    )


def _analyse_centre(smoothed: list[list[float]], smoothed_var: list[list[float]], psf_sigma: float) -> _CentreEstimate:
    """Quadratic + quartic peak position, widths and errors from the 3×3 smoothed values [y, x]."""
    v = smoothed
    centre = v[1][1]
    d2x = 2.0 * centre - v[1][0] - v[1][2]
    d2y = 2.0 * centre - v[0][1] - v[2][1]
    sx = 0.5 * (v[1][2] - v[1][0])
    sy = 0.5 * (v[2][1] - v[0][1])
    if d2x <= 0.0 or d2y <= 0.0:
        raise CentroidError(f"not at a maximum: d2x, d2y = {d2x:g} {d2y:g}")
    dx0 = sx / d2x
    dy0 = sy / d2y
    if abs(dx0) > MAX_FIRST_GUESS or abs(dy0) > MAX_FIRST_GUESS:
        raise CentroidError("almost vanishing second derivative")
    peak = abs(centre + 0.5 * (sx * dx0 + sy * dy0))

    rows = [_quartic_maximum(v[r][0], v[r][1], v[r][2]) for r in range(3)]
    cols = [_quartic_maximum(v[0][c], v[1][c], v[2][c]) for c in range(3)]
    quartic = all(m is not None for m in rows + cols)
    if quartic:
        m0x, m1x, m2x = rows
        m0y, m1y, m2y = cols
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
    # Object size² with the smoothing removed, floored at the smoothing width².
    smoothing2 = psf_sigma * psf_sigma
    tau_x2 = max(sigma_x2 - smoothing2, smoothing2)
    tau_y2 = max(sigma_y2 - smoothing2, smoothing2)

    w = smoothed_var
    sky_var = (w[0][0] + w[0][1] + w[0][2] + w[1][0] + w[1][2] + w[2][0] + w[2][1] + w[2][2]) / 8.0
    source_var = w[1][1]
    var_x = _position_variance(sky_var, source_var, peak, sx, d2x, abs(psf_sigma), quartic)
    var_y = _position_variance(sky_var, source_var, peak, sy, d2y, abs(psf_sigma), quartic)
    return _CentreEstimate(
        dx=xc,
        dy=yc,
        size_x2=tau_x2,
        size_y2=tau_y2,
        err_x=math.sqrt(var_x) if var_x >= 0.0 else math.nan,
        err_y=math.sqrt(var_y) if var_y >= 0.0 else math.nan,
    )


def _sdss_centroid_or_raise(
    image: np.ndarray, variance: np.ndarray, x_peak: int, y_peak: int, psf: Psf, psf_sigma: float
) -> SdssCentroidResult:
    if not psf_sigma > 0.0:
        raise ValueError(f"the PSF width must be positive, got {psf_sigma}")
    height, width = image.shape
    if not (0 <= x_peak < width and 0 <= y_peak < height):
        raise CentroidError(f"object at ({x_peak}, {y_peak}) is off the frame")
    kernel = psf.normalized_kernel(x_peak, y_peak)
    if kernel.shape != (2 * KERNEL_HALF + 1, 2 * KERNEL_HALF + 1):
        raise CentroidError(f"expected a 31x31 PSF kernel, got {kernel.shape}")
    kernel_sq = kernel * kernel
    neff = kernel.sum() ** 2 / kernel_sq.sum()
    kernels_t = np.stack([kernel.T, kernel_sq.T])[:, None]
    width_limit = WIDTH_FACTOR * (1.0 + psf_sigma * psf_sigma)

    bin_x = bin_y = 1
    binsize = 1
    while True:
        smoothed, smoothed_var = _smoothed_centre(image, variance, x_peak, y_peak, bin_x, bin_y, kernels_t, neff)
        est = _analyse_centre(smoothed, smoothed_var, psf_sigma)
        # Dilate from the lower-left corner of the central binned pixel (bin = 1 leaves it unchanged).
        dx = (est.dx + 0.5) * bin_x - 0.5
        dy = (est.dy + 0.5) * bin_y - 0.5
        err_x = est.err_x * bin_x
        err_y = est.err_y * bin_y
        size_x2 = est.size_x2 * bin_x * bin_x
        size_y2 = est.size_y2 * bin_y * bin_y
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
    return SdssCentroidResult(x=x_peak + dx, y=y_peak + dy, err_xx=err_x * err_x, err_yy=err_y * err_y, flag=False)


def sdss_centroid(
    image: np.ndarray, variance: np.ndarray, x_peak: int, y_peak: int, psf: Psf, psf_sigma: float
) -> SdssCentroidResult:
    """centroid.sdss at the peak pixel (x_peak, y_peak) (measurement-spec.md §3).

    The stamp around the peak is binned, smoothed with the local unit-sum PSF kernel and the maximum
    found from the central 3×3 (quadratic, then quartic refinement); the binning doubles along an axis
    whose width or offset is too large for the bin (up to `BIN_MAX`). `psf_sigma` is the adaptive-moment
    width of the PSF at the peak. On failure (stamp leaves the image, no maximum, ...) the result is the
    peak pixel with NaN errors and `flag` set.
    """
    try:
        return _sdss_centroid_or_raise(image, variance, int(x_peak), int(y_peak), psf, psf_sigma)
    except CentroidError:
        return SdssCentroidResult(x=float(x_peak), y=float(y_peak), err_xx=math.nan, err_yy=math.nan, flag=True)


# ---------------------------------------------------------------------------------------------------------
# centroid.gaussian
# ---------------------------------------------------------------------------------------------------------
#
# A circular Gaussian A·exp(−r²/2s²) + B fitted by Bevington's CURFIT Levenberg–Marquardt with the 2013
# iteration rules (first guess, pixel selection re-evaluated at every call relative to the current
# centre, λ schedule, retry count, stopping tests). scipy.optimize.least_squares cannot be used: its
# trust-region steps, λ updates and stopping criteria differ, and the pixel set changes between calls.

FIT_BOX = 32  # the fit uses a FIT_BOX × FIT_BOX raster starting at start − FIT_BOX/2 (clipped)
MIN_RADIUS = 0.3  # pixels used have MIN_RADIUS ≤ r/s ≤ MAX_RADIUS
MAX_RADIUS = 3.5
LOST_DISTANCE = 3.5  # peak search radius, and the fit stops when the centre moves further
TOO_CLOSE = 3  # minimum distance of the start pixel from the image edge
MIN_SIGMA = 1.5  # floor of the first-guess width
MAX_ITERATIONS = 15
LAMBDA_START = 1.0
LAMBDA_DIVISOR = 5.0
LAMBDA_OK = 1.0e-7
RATIO_MIN = -1.0e-7
RETRIES = 4
FREE_ITERATIONS = 3  # the stopping tests are ignored for iterations 0..FREE_ITERATIONS
N_PARAMS = 5  # peak A, sky B, x0, y0, s
PEAK, SKY, X0, Y0, SIGMA = range(N_PARAMS)

# Fit status codes (0 = continue); negative values are fatal.
TOO_FEW, BAD_WIDTH, DIAGONAL, BAD_A, SINGULAR = -12, -15, -17, -18, -1


class _GaussianFit:
    """State of the CURFIT iteration over one box of pixels (the 2013 twodg rules)."""

    def __init__(self, box: np.ndarray, x_first: int, y_first: int, start: np.ndarray) -> None:
        self.box = box
        self.x_first = float(x_first)
        self.y_first = float(y_first)
        self.x_coords = np.arange(x_first, x_first + box.shape[1], dtype=np.float64)
        self.y_coords = np.arange(y_first, y_first + box.shape[0], dtype=np.float64)
        self.start = start
        self.params = start.copy()
        self.alpha = np.zeros((N_PARAMS, N_PARAMS))
        self.beta = np.zeros(N_PARAMS)
        self.chisq = 0.0
        self.rms = 0.0
        self.rms_before = 0.0
        self.n_used = 0
        self.n_ref = 0
        self.flamd = LAMBDA_START
        self.status = 0

    def _normal_equations(self, params: np.ndarray) -> int:
        """Fill alpha, beta, chisq, n_used at `params` and return a status; a bad A or s leaves them.

        Only pixels with MIN_RADIUS ≤ r/s ≤ MAX_RADIUS around the current centre are used; they are
        looked for in the sub-box that can hold them (one pixel of margin) rather than the whole box.
        """
        a, b, x0, y0, s = params.tolist()
        if a <= 0.0:
            return BAD_A
        if s <= 0.0:
            return BAD_WIDTH
        reach = MAX_RADIUS * s
        x_first = self.x_first
        y_first = self.y_first
        c0 = max(int(math.floor(x0 - reach - x_first)), 0)
        c1 = max(min(int(math.ceil(x0 + reach - x_first)) + 1, self.box.shape[1]), c0)
        r0 = max(int(math.floor(y0 - reach - y_first)), 0)
        r1 = max(min(int(math.ceil(y0 + reach - y_first)) + 1, self.box.shape[0]), r0)
        inv_s = 1.0 / s
        dx = (self.x_coords[c0:c1] - x0) * inv_s
        dy = (self.y_coords[r0:r1] - y0) * inv_s
        d2 = (dy * dy)[:, None] + dx * dx
        used = ((d2 >= MIN_RADIUS * MIN_RADIUS) & (d2 <= MAX_RADIUS * MAX_RADIUS)).astype(np.float64)
        # Rows: the 5 derivatives and the residual. Unused pixels get zeros, so they add exactly nothing;
        # one product of this matrix with its transpose gives alpha, beta and chi².
        rows = np.empty((N_PARAMS + 1, *d2.shape))
        arg = np.exp(-0.5 * d2, out=rows[PEAK])
        arg *= used
        rows[SKY] = used
        a_arg_s = arg * (a * inv_s)
        np.multiply(a_arg_s, dx, out=rows[X0])
        np.multiply(a_arg_s, dy[:, None], out=rows[Y0])
        np.multiply(a_arg_s, d2, out=rows[SIGMA])
        residual = np.subtract(self.box[r0:r1, c0:c1], b, out=rows[N_PARAMS])
        residual -= a * arg
        residual *= used
        rows = rows.reshape(N_PARAMS + 1, -1)
        products = rows @ rows.T
        self.alpha = products[:N_PARAMS, :N_PARAMS]
        self.beta = products[:N_PARAMS, N_PARAMS]
        self.chisq = float(products[N_PARAMS, N_PARAMS])
        self.n_used = int(np.count_nonzero(used))
        return TOO_FEW if self.n_used <= N_PARAMS + 1 else 0

    def _update_rms(self) -> None:
        self.rms = math.sqrt(self.chisq / (self.n_ref - (N_PARAMS + 1)))

    def step(self, iteration: int) -> None:
        """One CURFIT call: up to RETRIES trial steps, λ ÷5 on the first improvement, ×3 on each failure."""
        self.status = 0
        if iteration == 0:
            self.status = self._normal_equations(self.params)
            if self.status != 0:
                return
            self.n_ref = self.n_used
            self._update_rms()
        self.rms_before = self.rms
        saved = (self.chisq, self.rms, self.params, self.beta, self.alpha)
        for _ in range(RETRIES):
            diag = self.alpha.diagonal()
            if not diag.all():
                self.status = DIAGONAL
                return
            scale = np.sqrt(diag)
            scaled = self.alpha / (scale[:, None] * scale)
            scaled.flat[:: N_PARAMS + 1] = 1.0 + self.flamd
            _, _, solution, info = lapack.dgesv(scaled, self.beta / scale)
            if info != 0:
                self.status = SINGULAR
                return
            self.params = self.params + solution / scale
            self.status = self._normal_equations(self.params)
            if self.status == TOO_FEW:
                return
            self._update_rms()
            if self.status == 0 and self.rms <= self.rms_before:
                self.flamd /= LAMBDA_DIVISOR
                return
            self.flamd *= 3.0
            self.chisq, self.rms, self.params, self.beta, self.alpha = saved

    def finished(self, iteration: int, width: int, height: int) -> bool:
        """The 2013 stopping tests (all skipped up to iteration FREE_ITERATIONS)."""
        if iteration <= FREE_ITERATIONS:
            return False
        if self.flamd < LAMBDA_OK or self.status < 0 or self.n_used < N_PARAMS + 1 or self.chisq <= 0.0:
            return True
        _, _, x0, y0, s = self.params.tolist()
        if x0 < 0.0 or x0 > width or y0 < 0.0 or y0 > height or s < 0.0:
            return True
        if abs(self.start[X0] - x0) > LOST_DISTANCE or abs(self.start[Y0] - y0) > LOST_DISTANCE:
            return True
        return (self.rms - self.rms_before) / self.rms > RATIO_MIN or iteration > MAX_ITERATIONS


def _half_maximum_width(profile: np.ndarray, centre: int, lo: int, hi: int, level: float) -> float:
    """Distance between the `level` crossings of `profile` on either side of index `centre`.

    The upper crossing is searched up to index hi − 1 (hi − 1 if none), the lower one down to index 0
    (lo if none), each interpolated linearly between the last pixel above `level` and the first at or
    below it (half a pixel beyond if the two are equal).
    """
    upper = float(hi - 1)
    above = np.flatnonzero(profile[centre + 1 : hi] <= level)
    if above.size:
        x = centre + above[0]
        step = profile[x + 1] - profile[x]
        upper = x + (0.5 if step == 0.0 else (level - profile[x]) / step)
    lower = float(lo)
    below = np.flatnonzero(profile[centre - 1 :: -1] <= level) if centre > 0 else np.empty(0, np.int64)
    if below.size:
        x = centre - below[0]
        step = profile[x - 1] - profile[x]
        lower = x - (0.5 if step == 0.0 else (level - profile[x]) / step)
    return upper - lower


def gaussian_centroid(image: np.ndarray, x: float, y: float) -> tuple[float, float, bool]:
    """centroid.gaussian: centre of a circular 2-D Gaussian fitted around (x, y) (measurement-spec.md §3).

    Returns (x0, y0, flag); the fitted centre is returned whatever the fit status (diverged fits
    included); only a non-positive fitted peak (or a start pixel within 3 px of the edge) gives NaN
    and flag = True.
    """
    height, width = image.shape
    ix = int(math.floor(x + 0.5))
    iy = int(math.floor(y + 0.5))
    if ix < TOO_CLOSE or width - ix < TOO_CLOSE or iy < TOO_CLOSE or height - iy < TOO_CLOSE:
        return math.nan, math.nan, True
    xl = max(ix - FIT_BOX // 2, 0)
    yl = max(iy - FIT_BOX // 2, 0)
    xh = min(xl + FIT_BOX, width)
    yh = min(yl + FIT_BOX, height)
    box = image[yl:yh, xl:xh].astype(np.float64)
    sky = float(box.min())

    # Peak: the brightest pixel within LOST_DISTANCE of the start (the start pixel wins ties).
    near = (np.arange(xl - ix, xh - ix) ** 2 + np.arange(yl - iy, yh - iy)[:, None] ** 2) <= LOST_DISTANCE**2
    start_value = float(image[iy, ix])
    candidates = np.where(near, box, -np.inf)
    best = int(np.argmax(candidates))
    px, py = ix, iy
    if candidates.flat[best] > start_value:
        py, px = yl + best // box.shape[1], xl + best % box.shape[1]
    peak_value = float(image[py, px])
    level = 0.5 * (peak_value + sky)
    row = image[py, :xh].astype(np.float64)
    col = image[:yh, px].astype(np.float64)
    fwhm_x = _half_maximum_width(row, px, xl, xh, level)
    fwhm_y = _half_maximum_width(col, py, yl, yh, level)
    sigma = max(0.5 * (fwhm_x + fwhm_y) / 2.354, MIN_SIGMA)

    start = np.array([peak_value - sky, sky, float(ix), float(iy), sigma])
    fit = _GaussianFit(box, xl, yl, start)
    fit.step(0)
    if fit.n_ref > 0:  # the first guess could be evaluated
        iteration = 0
        while not fit.finished(iteration, width, height):
            iteration += 1
            fit.step(iteration)
    if fit.params[PEAK] <= 0.0:
        return math.nan, math.nan, True
    return float(fit.params[X0]), float(fit.params[Y0]), False


# ---------------------------------------------------------------------------------------------------------
# centroid.gaussian for many sources at once
# ---------------------------------------------------------------------------------------------------------
#
# The same first guess and CURFIT iteration as `gaussian_centroid`, with the per-source state held in arrays
# and every source advancing by one trial step (solve + normal equations) per round. The arithmetic is
# element-for-element that of the scalar code: each source's normal equations are one A·Aᵀ product over
# exactly the scalar sub-box (sources are grouped by sub-box shape), and the 5×5 systems go through LAPACK
# dgesv, so the results are the scalar ones bit for bit.

GAUSSIAN_STAMP_HALF = 24  # stamps centred on (round(x), round(y)): the fit box plus 8 px for the FWHM search
_BOX_HALF = FIT_BOX // 2
WINDOW_STEP = 6  # sub-box sizes are evaluated in classes of this many rows and columns


def _half_maximum_widths(
    profiles: np.ndarray, origin: np.ndarray, centre: np.ndarray, lo: np.ndarray, hi: np.ndarray, level: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """`_half_maximum_width` for many profiles; profile index k is image pixel origin + k.

    Returns (width, complete): `complete` is False where the lower search ran off the start of a profile
    that does not reach image pixel 0 (the scalar search would have looked further).
    """
    index = np.arange(profiles.shape[1])
    rel_centre = (centre - origin)[:, None]
    at_or_below = profiles <= level[:, None]
    rows = np.arange(len(profiles))

    upper_hits = at_or_below & (index > rel_centre) & (index < (hi - origin)[:, None])
    first = np.argmax(upper_hits, axis=1)
    last_above = np.maximum(first - 1, 0)
    step = profiles[rows, first] - profiles[rows, last_above]
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = np.where(step == 0.0, 0.5, (level - profiles[rows, last_above]) / step)
    upper = np.where(upper_hits.any(axis=1), (last_above + origin) + fraction, hi - 1.0)

    lower_hits = at_or_below & (index < rel_centre) & (index >= np.maximum(-origin, 0)[:, None])
    last = index[-1] - np.argmax(lower_hits[:, ::-1], axis=1)
    first_above = np.minimum(last + 1, index[-1])
    step = profiles[rows, last] - profiles[rows, first_above]
    with np.errstate(divide="ignore", invalid="ignore"):
        fraction = np.where(step == 0.0, 0.5, (level - profiles[rows, first_above]) / step)
    found = lower_hits.any(axis=1)
    lower = np.where(found, (first_above + origin) - fraction, lo.astype(np.float64))
    return upper - lower, found | (origin <= 0)


class _GaussianFitBatch:
    """CURFIT state of many sources, each with a zero-padded copy of its fit box."""

    def __init__(self, stamps: np.ndarray, stamp_of: np.ndarray, box_x: np.ndarray, box_y: np.ndarray,
                 box_w: np.ndarray, box_h: np.ndarray, x_first: np.ndarray, y_first: np.ndarray,
                 start: np.ndarray) -> None:
        n = len(start)
        # Each fit's box, zero-padded so that any evaluation window starting inside the box fits.
        padded = FIT_BOX + WINDOW_STEP
        offsets = np.arange(padded)
        rows = np.minimum(box_y[:, None] + offsets, stamps.shape[1] - 1)
        cols = np.minimum(box_x[:, None] + offsets, stamps.shape[2] - 1)
        inside = (offsets < box_h[:, None])[:, :, None] & (offsets < box_w[:, None])[:, None, :]
        self.boxes = np.where(inside, stamps[stamp_of[:, None, None], rows[:, :, None], cols[:, None, :]], 0.0)
        self.box_w, self.box_h = box_w, box_h
        self.x_first = x_first.astype(np.float64)  # image coordinates of box pixel (0, 0)
        self.y_first = y_first.astype(np.float64)
        self.start = start
        self.params = start.copy()
        self.alpha = np.zeros((n, N_PARAMS, N_PARAMS))
        self.beta = np.zeros((n, N_PARAMS))
        self.chisq = np.zeros(n)
        self.rms = np.zeros(n)
        self.rms_before = np.zeros(n)
        self.n_used = np.zeros(n, np.int64)
        self.n_ref = np.zeros(n, np.int64)
        self.flamd = np.full(n, LAMBDA_START)
        self.status = np.zeros(n, np.int64)
        self.broken = np.zeros(n, bool)  # the scalar code would raise (non-finite centre or width)
        self.saved: tuple[np.ndarray, ...] = (self.chisq.copy(), self.rms.copy(), self.params.copy(),
                                               self.beta.copy(), self.alpha.copy())

    def normal_equations(self, fits: np.ndarray) -> np.ndarray:
        """`_GaussianFit._normal_equations` at self.params for the fits `fits`; returns their status."""
        a, b, x0, y0, s = self.params[fits].T
        status = np.where(a <= 0.0, BAD_A, np.where(s <= 0.0, BAD_WIDTH, 0))
        with np.errstate(invalid="ignore", over="ignore"):
            reach = MAX_RADIUS * s
            bounds = [x0 - reach - self.x_first[fits], x0 + reach - self.x_first[fits],
                      y0 - reach - self.y_first[fits], y0 + reach - self.y_first[fits]]
        finite = np.logical_and.reduce([np.isfinite(v) for v in bounds])
        raising = (status == 0) & ~finite
        self.broken[fits[raising]] = True
        status[raising] = SINGULAR
        go = status == 0
        fits, a, b, x0, y0, s = fits[go], a[go], b[go], x0[go], y0[go], s[go]
        if fits.size:
            self._accumulate(fits, a, b, x0, y0, s, [v[go] for v in bounds])
            status[go] = np.where(self.n_used[fits] <= N_PARAMS + 1, TOO_FEW, 0)
        return status

    def _accumulate(self, fits: np.ndarray, a: np.ndarray, b: np.ndarray, x0: np.ndarray, y0: np.ndarray,
                    s: np.ndarray, bounds: list[np.ndarray]) -> None:
        """alpha, beta, chisq and n_used of the fits `fits` (all with a, s > 0 and a finite sub-box)."""
        width, height = self.box_w[fits], self.box_h[fits]
        x_lo, x_hi, y_lo, y_hi = bounds
        c0 = np.clip(np.floor(x_lo), 0, width).astype(np.int64)
        c1 = np.maximum(np.minimum(np.ceil(np.minimum(x_hi, 2.0 * FIT_BOX)) + 1, width), c0).astype(np.int64)
        r0 = np.clip(np.floor(y_lo), 0, height).astype(np.int64)
        r1 = np.maximum(np.minimum(np.ceil(np.minimum(y_hi, 2.0 * FIT_BOX)) + 1, height), r0).astype(np.int64)
        n_cols, n_rows = c1 - c0, r1 - r0
        # Sub-boxes are evaluated in size classes (a window of up to WINDOW_STEP - 1 extra rows and columns),
        # sorted by exact shape within a class so that each shape forms one contiguous block.
        size_class = (-(-n_rows // WINDOW_STEP)) * (FIT_BOX + 1) - (-n_cols // WINDOW_STEP)
        order = np.lexsort((n_rows * (FIT_BOX + 1) + n_cols, size_class))
        size_class = size_class[order]
        starts = np.flatnonzero(np.r_[True, size_class[1:] != size_class[:-1]])
        for begin, end in zip(starts, np.r_[starts[1:], len(fits)], strict=True):
            chunk = order[begin:end]
            self._accumulate_window(fits[chunk], a[chunk], b[chunk], x0[chunk], y0[chunk], s[chunk], c0[chunk],
                                    r0[chunk], n_cols[chunk], n_rows[chunk])

    def _accumulate_window(self, fits: np.ndarray, a: np.ndarray, b: np.ndarray, x0: np.ndarray, y0: np.ndarray,
                           s: np.ndarray, c0: np.ndarray, r0: np.ndarray, n_cols: np.ndarray,
                           n_rows: np.ndarray) -> None:
        """`_accumulate` for fits sorted by sub-box shape, on a window of their largest shape.

        Each fit is evaluated on the window from its sub-box corner; only the window's first n_rows × n_cols
        pixels are its sub-box, the rest is sliced away before the products.
        """
        win_rows = max(int(n_rows.max()), 1)
        win_cols = max(int(n_cols.max()), 1)
        inv_s = 1.0 / s
        dx = ((self.x_first[fits][:, None] + (c0[:, None] + np.arange(win_cols))) - x0[:, None]) * inv_s[:, None]
        dy = ((self.y_first[fits][:, None] + (r0[:, None] + np.arange(win_rows))) - y0[:, None]) * inv_s[:, None]
        n_boxes, size_y, size_x = self.boxes.shape
        s0, s1, s2 = self.boxes.strides
        windows = np.ndarray((n_boxes, size_y - win_rows + 1, size_x - win_cols + 1, win_rows, win_cols),
                             np.float64, self.boxes, 0, (s0, s1, s2, s1, s2))  # read-only use: a strided view
        box = windows[fits, r0, c0]

        # Planes (row of the design matrix, fit, y, x), each contiguous like the scalar code's rows.
        rows = np.empty((N_PARAMS + 1, len(fits), win_rows, win_cols))
        d2 = np.add((dy * dy)[:, :, None], (dx * dx)[:, None, :], out=rows[SIGMA])
        used = rows[SKY]
        np.copyto(used, (d2 >= MIN_RADIUS * MIN_RADIUS) & (d2 <= MAX_RADIUS * MAX_RADIUS))
        arg = np.exp(-0.5 * d2, out=rows[PEAK])
        arg *= used
        # per-fit factors are applied on flat (fit, pixel) views: long inner loops
        flat = rows.reshape(N_PARAMS + 1, len(fits), -1)
        a_arg_s = np.multiply(flat[PEAK], (a * inv_s)[:, None], out=flat[N_PARAMS]).reshape(arg.shape)
        np.multiply(a_arg_s, dx[:, None, :], out=rows[X0])
        np.multiply(a_arg_s, dy[:, :, None], out=rows[Y0])
        d2 *= a_arg_s
        residual = np.subtract(box.reshape(len(fits), -1), b[:, None], out=flat[N_PARAMS])
        residual -= a[:, None] * flat[PEAK]
        residual *= flat[SKY]

        products = np.empty((len(fits), N_PARAMS + 1, N_PARAMS + 1))
        shape_key = n_rows * (FIT_BOX + 1) + n_cols
        starts = np.flatnonzero(np.r_[True, shape_key[1:] != shape_key[:-1]])
        for begin, end in zip(starts, np.r_[starts[1:], len(fits)], strict=True):
            h, w = int(n_rows[begin]), int(n_cols[begin])
            block = np.ascontiguousarray(rows[:, begin:end, :h, :w].transpose(1, 0, 2, 3))
            block = block.reshape(end - begin, N_PARAMS + 1, h * w)
            products[begin:end] = block @ block.transpose(0, 2, 1)
        self.alpha[fits] = products[:, :N_PARAMS, :N_PARAMS]
        self.beta[fits] = products[:, :N_PARAMS, N_PARAMS]
        self.chisq[fits] = products[:, N_PARAMS, N_PARAMS]
        self.n_used[fits] = products[:, SKY, SKY].astype(np.int64)  # Σ used² counts the pixels used

    def update_rms(self, fits: np.ndarray) -> None:
        with np.errstate(invalid="ignore", divide="ignore"):
            self.rms[fits] = np.sqrt(self.chisq[fits] / (self.n_ref[fits] - (N_PARAMS + 1)))

    def begin_step(self, fits: np.ndarray) -> None:
        """The start of `step`: reset the status, remember the rms and the state to restore on failure."""
        self.status[fits] = 0
        self.rms_before[fits] = self.rms[fits]
        for saved, current in zip(self.saved, (self.chisq, self.rms, self.params, self.beta, self.alpha),
                                  strict=True):
            saved[fits] = current[fits]

    def restore(self, fits: np.ndarray) -> None:
        for saved, current in zip(self.saved, (self.chisq, self.rms, self.params, self.beta, self.alpha),
                                  strict=True):
            current[fits] = saved[fits]

    def solve(self, fits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One trial step of the fits `fits`: returns (stepped fits, fits with a zero diagonal, singular fits)."""
        diag = self.alpha[fits].diagonal(axis1=1, axis2=2)
        zero_diagonal = ~diag.all(axis=1)
        zero_diagonal_fits = fits[zero_diagonal]
        fits, diag = fits[~zero_diagonal], diag[~zero_diagonal]
        with np.errstate(invalid="ignore"):
            scale = np.sqrt(diag)
            scaled = self.alpha[fits] / (scale[:, :, None] * scale[:, None, :])
            scaled[:, np.arange(N_PARAMS), np.arange(N_PARAMS)] = (1.0 + self.flamd[fits])[:, None]
            rhs = (self.beta[fits] / scale)[:, :, None]
        singular = np.zeros(len(fits), bool)
        try:
            solution = np.linalg.solve(scaled, rhs)[:, :, 0]
        except np.linalg.LinAlgError:
            solution = np.zeros((len(fits), N_PARAMS))
            for k in range(len(fits)):
                try:
                    solution[k] = np.linalg.solve(scaled[k], rhs[k])[:, 0]
                except np.linalg.LinAlgError:
                    singular[k] = True
        ok = ~singular
        with np.errstate(invalid="ignore", over="ignore"):
            self.params[fits[ok]] = self.params[fits[ok]] + solution[ok] / scale[ok]
        return fits[ok], zero_diagonal_fits, fits[singular]

    def finished(self, fits: np.ndarray, iteration: np.ndarray, width: int, height: int) -> np.ndarray:
        """`_GaussianFit.finished` for the fits `fits` at their iteration numbers."""
        _, _, x0, y0, s = self.params[fits].T
        rms, rms_before = self.rms[fits], self.rms_before[fits]
        with np.errstate(invalid="ignore", divide="ignore"):
            stop = (
                (self.flamd[fits] < LAMBDA_OK) | (self.status[fits] < 0) | (self.n_used[fits] < N_PARAMS + 1)
                | (self.chisq[fits] <= 0.0)
                | (x0 < 0.0) | (x0 > width) | (y0 < 0.0) | (y0 > height) | (s < 0.0)
                | (np.abs(self.start[fits, X0] - x0) > LOST_DISTANCE)
                | (np.abs(self.start[fits, Y0] - y0) > LOST_DISTANCE)
                | ((rms - rms_before) / rms > RATIO_MIN) | (iteration > MAX_ITERATIONS)
            )
        return (iteration > FREE_ITERATIONS) & stop


def _first_guesses(
    stamps: np.ndarray, origin_x: np.ndarray, origin_y: np.ndarray, ix: np.ndarray, iy: np.ndarray,
    box_x: np.ndarray, box_y: np.ndarray, x_first: np.ndarray, y_first: np.ndarray,
    x_end: np.ndarray, y_end: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """The scalar first guess (A, B, x, y, s) of each stamp, and whether the stamp held the pixels it needs."""
    n = len(stamps)
    offsets = np.arange(FIT_BOX)
    valid = (offsets[None, :] < (y_end - y_first)[:, None])[:, :, None] & \
        (offsets[None, :] < (x_end - x_first)[:, None])[:, None, :]
    rows = np.minimum(box_y[:, None] + offsets, stamps.shape[1] - 1)
    cols = np.minimum(box_x[:, None] + offsets, stamps.shape[2] - 1)
    box = stamps[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]
    sky = np.where(valid, box, np.inf).min(axis=(1, 2))

    ddx = (x_first - ix)[:, None] + offsets
    ddy = (y_first - iy)[:, None] + offsets
    near = (ddx * ddx)[:, None, :] + (ddy * ddy)[:, :, None] <= LOST_DISTANCE**2
    candidates = np.where(near & valid, box, -np.inf).reshape(n, -1)
    best = np.argmax(candidates, axis=1)
    start_value = stamps[np.arange(n), iy - origin_y, ix - origin_x]
    moved = candidates[np.arange(n), best] > start_value
    px = np.where(moved, x_first + best % FIT_BOX, ix)
    py = np.where(moved, y_first + best // FIT_BOX, iy)
    peak_value = stamps[np.arange(n), py - origin_y, px - origin_x]
    level = 0.5 * (peak_value + sky)
    row_profiles = stamps[np.arange(n), py - origin_y, :]
    col_profiles = stamps[np.arange(n), :, px - origin_x]
    fwhm_x, complete_x = _half_maximum_widths(row_profiles, origin_x, px, x_first, x_end, level)
    fwhm_y, complete_y = _half_maximum_widths(col_profiles, origin_y, py, y_first, y_end, level)
    sigma = np.maximum(0.5 * (fwhm_x + fwhm_y) / 2.354, MIN_SIGMA)
    start = np.stack([peak_value - sky, sky, ix.astype(np.float64), iy.astype(np.float64), sigma], axis=1)
    return start, complete_x & complete_y


def gaussian_centroid_stamps(
    stamps: np.ndarray,
    origin_x: np.ndarray,
    origin_y: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    image_shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`gaussian_centroid` of N sources, each from a stamp of its own image (equal results, bit for bit).

    Stamp n (shape (N, Sy, Sx)) holds image pixels [origin_y[n]:, origin_x[n]:] of an image of shape
    `image_shape`; stamp pixels off the image are never read. Stamps of half-size `GAUSSIAN_STAMP_HALF`
    centred on (round(x), round(y)) hold what nearly all sources need. Returns (x0, y0, flag, fallback):
    `fallback` lists the sources whose fit needs pixels outside their stamp (the 32×32 box, or a lower
    half-maximum search that runs off the stamp towards the image edge) or on which the scalar code would
    raise (non-finite positions); their x0, y0 are NaN and the caller must run `gaussian_centroid` on them.
    """
    stamps = np.asarray(stamps, dtype=np.float64)
    n = len(stamps)
    height, width = image_shape
    origin_x = np.asarray(origin_x, dtype=np.int64)
    origin_y = np.asarray(origin_y, dtype=np.int64)
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x0 = np.full(n, np.nan)
    y0 = np.full(n, np.nan)
    flag = np.ones(n, bool)

    finite = np.isfinite(x) & np.isfinite(y) & (np.abs(x) < 2.0**62) & (np.abs(y) < 2.0**62)
    ix = np.floor(np.where(finite, x, 0.0) + 0.5).astype(np.int64)
    iy = np.floor(np.where(finite, y, 0.0) + 0.5).astype(np.int64)
    too_close = (ix < TOO_CLOSE) | (width - ix < TOO_CLOSE) | (iy < TOO_CLOSE) | (height - iy < TOO_CLOSE)
    x_first = np.maximum(ix - _BOX_HALF, 0)
    y_first = np.maximum(iy - _BOX_HALF, 0)
    x_end = np.minimum(x_first + FIT_BOX, width)
    y_end = np.minimum(y_first + FIT_BOX, height)
    box_x = x_first - origin_x
    box_y = y_first - origin_y
    box_inside = (box_x >= 0) & (box_y >= 0) & (x_end - origin_x <= stamps.shape[2]) & \
        (y_end - origin_y <= stamps.shape[1])
    fallback = ~finite | (~too_close & ~box_inside)
    todo = np.flatnonzero(finite & ~too_close & box_inside)
    if todo.size == 0:
        return x0, y0, flag, np.flatnonzero(fallback)

    start, complete = _first_guesses(stamps[todo], origin_x[todo], origin_y[todo], ix[todo], iy[todo], box_x[todo],
                                     box_y[todo], x_first[todo], y_first[todo], x_end[todo], y_end[todo])
    fallback[todo[~complete]] = True
    todo, start = todo[complete], start[complete]
    fit = _GaussianFitBatch(stamps, todo, box_x[todo], box_y[todo], x_end[todo] - x_first[todo],
                            y_end[todo] - y_first[todo], x_first[todo], y_first[todo], start)
    all_fits = np.arange(len(todo))
    iteration = np.zeros(len(todo), np.int64)
    retries = np.zeros(len(todo), np.int64)

    # step(0): the first guess must be evaluable, else the fit keeps it.
    first_ok = all_fits[fit.normal_equations(all_fits) == 0]
    fit.n_ref[first_ok] = fit.n_used[first_ok]
    fit.update_rms(first_ok)
    fit.begin_step(first_ok)
    trying = first_ok
    while trying.size:
        stepped, zero_diagonal, singular = fit.solve(trying)
        fit.status[zero_diagonal] = DIAGONAL
        fit.status[singular] = SINGULAR
        ended = [zero_diagonal, singular]
        status = fit.normal_equations(stepped)
        fit.status[stepped] = status
        too_few = status == TOO_FEW
        ended.append(stepped[too_few])
        evaluated = stepped[~too_few]
        fit.update_rms(evaluated)
        improved = (fit.status[evaluated] == 0) & (fit.rms[evaluated] <= fit.rms_before[evaluated])
        fit.flamd[evaluated[improved]] /= LAMBDA_DIVISOR
        ended.append(evaluated[improved])
        failed = evaluated[~improved]
        fit.flamd[failed] *= 3.0
        fit.restore(failed)
        retries[failed] += 1
        ended.append(failed[retries[failed] == RETRIES])
        again = failed[retries[failed] < RETRIES]

        step_done = np.concatenate(ended)
        step_done = step_done[~fit.broken[step_done]]
        going_on = step_done[~fit.finished(step_done, iteration[step_done], width, height)]
        iteration[going_on] += 1
        retries[going_on] = 0
        fit.begin_step(going_on)
        trying = np.concatenate([again[~fit.broken[again]], going_on])

    result = todo[~fit.broken]
    params = fit.params[~fit.broken]
    fallback[todo[fit.broken]] = True
    failed_peak = params[:, PEAK] <= 0.0
    x0[result] = np.where(failed_peak, np.nan, params[:, X0])
    y0[result] = np.where(failed_peak, np.nan, params[:, Y0])
    flag[result] = failed_peak
    flag[fallback] = True
    return x0, y0, flag, np.flatnonzero(fallback)


def gaussian_centroid_many(
    image: np.ndarray, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`gaussian_centroid` at every (x, y) of one image: stamps of half-size GAUSSIAN_STAMP_HALF, scalar fallback."""
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    y = np.atleast_1d(np.asarray(y, dtype=np.float64))
    height, width = image.shape
    half = GAUSSIAN_STAMP_HALF
    offsets = np.arange(-half, half + 1)
    origin_x = np.floor(np.nan_to_num(x) + 0.5).astype(np.int64) - half
    origin_y = np.floor(np.nan_to_num(y) + 0.5).astype(np.int64) - half
    cols = origin_x[:, None] + half + offsets
    rows = origin_y[:, None] + half + offsets
    stamps = image[np.clip(rows, 0, height - 1)[:, :, None], np.clip(cols, 0, width - 1)[:, None, :]]
    x0, y0, flag, fallback = gaussian_centroid_stamps(stamps, origin_x, origin_y, x, y, image.shape)
    for index in fallback:
        x0[index], y0[index], flag[index] = gaussian_centroid(image, float(x[index]), float(y[index]))
    return x0, y0, flag
