"""Centroids: centroid.sdss and centroid.gaussian as computed by the LSST 2013 stack (measurement-spec.md §3).

Coordinates are 0-based pixel centres, arrays are indexed [y, x]. centroid.sdss runs compiled for all sources
of an image in one call (`sdss_centroid_sources`; its per-source reference `sdss_centroid`, the same values bit
for bit, is in tests/reference_impl/centroid.py); centroid.gaussian has the scalar numpy `gaussian_centroid`
(the reference, and the path for non-finite pixels) and the compiled `gaussian_centroid_sources` for all
sources of an image (`centroid_kernels`).
"""

from __future__ import annotations

import math

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
    PEAK,
    RATIO_MIN,
    RETRIES,
    SIGMA,
    SINGULAR,
    SKY,
    TOO_CLOSE,
    TOO_FEW,
    X0,
    Y0,
)
from processccd.meas.noise_replacement import deltas_by_source
from processccd.psf import Psf

# ---------------------------------------------------------------------------------------------------------
# centroid.sdss
# ---------------------------------------------------------------------------------------------------------

KERNEL_SIZE = 31  # the PSF kernel is 31×31


def _unit_sum_kernels(psf: Psf, x_peak: np.ndarray, y_peak: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The unit-sum `psf.kernel` at each peak pixel and its neff = (sum k)² / sum k², as `sdss_centroid` computes
    them, bit for bit: the kernels come from `psf.kernel` one by one (`psf.kernels` rounds differently), the
    sums are numpy's pairwise sums of each 31×31 kernel (as for a single one) and the square is a scalar
    power, as there."""
    kernels = np.stack([psf.kernel(x, y) for x, y in zip(x_peak.tolist(), y_peak.tolist(), strict=True)])
    kernels /= kernels.sum(axis=(1, 2))[:, None, None]
    squared_sums = np.array([total**2 for total in kernels.sum(axis=(1, 2))])
    return kernels, squared_sums / (kernels * kernels).sum(axis=(1, 2))


def sdss_centroid_sources(
    image: np.ndarray, variance: np.ndarray, x_peak: np.ndarray, y_peak: np.ndarray, psf: Psf,
    psf_sigma: np.ndarray,
    footprint_deltas: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`sdss_centroid` of every source i at its peak pixel (x_peak[i], y_peak[i]) with PSF width psf_sigma[i], in
    one compiled call (`centroid_kernels.sdss_centroid_sources`), with the same values bit for bit.

    `image` has every footprint replaced by noise (`NoiseReplacer.footprint_deltas()`, or None: nothing
    replaced); each source is measured with its own footprint put back, and `image` is left as it was.
    Returns (x, y, err_xx, err_yy, flag) as the fields of `SdssCentroidResult`.
    """
    from processccd.meas import centroid_kernels

    x_peak = np.asarray(x_peak, dtype=np.int64)
    y_peak = np.asarray(y_peak, dtype=np.int64)
    psf_sigma = np.asarray(psf_sigma, dtype=np.float64)
    if not np.all(psf_sigma > 0.0):
        raise ValueError(f"the PSF widths must be positive, got {psf_sigma[~(psf_sigma > 0.0)][0]}")
    count = x_peak.size
    height, width = image.shape
    inside = np.flatnonzero((x_peak >= 0) & (x_peak < width) & (y_peak >= 0) & (y_peak < height))
    results = np.full((count, 4), math.nan)
    outcomes = np.full(count, centroid_kernels.LEAVES_IMAGE, dtype=np.int64)
    if inside.size and psf.size == KERNEL_SIZE:  # else every source fails, as in `sdss_centroid`
        kernels, neffs = _unit_sum_kernels(psf, x_peak[inside], y_peak[inside])
        starts, ys, xs, deltas = deltas_by_source(footprint_deltas, count)
        centroid_kernels.sdss_centroid_sources(image, variance, inside, x_peak, y_peak, kernels, neffs, psf_sigma,
                                               starts, ys, xs, deltas, results, outcomes)
    flag = outcomes != centroid_kernels.OK
    x = np.where(flag, x_peak, results[:, 0])
    y = np.where(flag, y_peak, results[:, 1])
    return x, y, results[:, 2], results[:, 3], flag


# ---------------------------------------------------------------------------------------------------------
# centroid.gaussian
# ---------------------------------------------------------------------------------------------------------
#
# A circular Gaussian A·exp(−r²/2s²) + B fitted by Bevington's CURFIT Levenberg–Marquardt with the 2013
# iteration rules (first guess, pixel selection re-evaluated at every call relative to the current
# centre, λ schedule, retry count, stopping tests). scipy.optimize.least_squares cannot be used: its
# trust-region steps, λ updates and stopping criteria differ, and the pixel set changes between calls.

# The fit constants are in `centroid_constants`, shared with the compiled fit (`centroid_kernels`).


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
            from scipy.linalg import lapack  # on first use: reading the configuration needs no scipy

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


def gaussian_centroid_sources(
    image: np.ndarray, x: np.ndarray, y: np.ndarray,
    footprint_deltas: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`gaussian_centroid` of N sources at (x, y) on the full image, compiled in one call
    (`centroid_kernels.gaussian_centroid_kernel`).

    `footprint_deltas` ((source, ys, xs, original - noise) of every footprint pixel, sorted by source, as
    `NoiseReplacer.footprint_deltas` gives) puts each source's own footprint back into `image` (every
    footprint replaced by noise) while it is measured; `image` is left as it was. Returns (x0, y0, flag,
    fallback): the sources in `fallback` (non-finite pixels in the fit box or a non-finite centre) are NaN
    and flagged, and the caller must run `gaussian_centroid` on them.
    """
    from processccd.meas import centroid_kernels

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    count = x.size
    starts, ys, xs, deltas = deltas_by_source(footprint_deltas, count)
    results = np.full((count, 2), math.nan)
    outcomes = np.empty(count, dtype=np.int64)
    centroid_kernels.gaussian_centroid_sources(image, x, y, starts, ys, xs, deltas, results, outcomes)
    fitted = outcomes == centroid_kernels.FITTED
    x0, y0 = np.where(fitted, results[:, 0], math.nan), np.where(fitted, results[:, 1], math.nan)
    return x0, y0, ~fitted, np.flatnonzero(outcomes == centroid_kernels.FALLBACK)
