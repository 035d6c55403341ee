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
