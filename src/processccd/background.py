"""Sky background as the LSST 2013 stack estimated it (afw BackgroundMI, measurement-spec.md §2.1).

The frame is cut into a grid of nx = W // bin + 1 by ny = H // bin + 1 cells; each cell's value is the
3-pass clipped mean (MEANCLIP) of its unmasked pixels, placed at the cell centre. The model is a natural
cubic spline along y through each grid column, evaluated at every row, then a natural cubic spline along x
through those values for every row; outside the first/last cell centre it is extrapolated with the end
value, slope and curvature of the spline (linear, since a natural spline has zero end curvature).

Quantiles (median and quartiles of the first clipping pass) use linear interpolation between order
statistics at index p (n - 1) (numpy's default "linear" method); this is the definition afw's percentile
helper used. The order statistics of float32 data come from an exact radix select and the cell pixels are
gathered by compiled loops (`processccd.pixel_kernels`, imported on first use).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from processccd.errors import CalibrationError
from processccd.stats import IQR_TO_SIGMA

SPLINE_MIN_POINTS = 3  # a natural cubic spline needs >= 3 knots (afw/GSL cspline; fewer -> exception)

_CORE_FRACTION = 0.7  # values within this fraction of the first clipping window are summed once
_scratch = threading.local()  # `_offsets_scratch`'s array
_MODEL_ROWS_PER_BLOCK = 32  # the float64 model is formed this many rows at a time (no full-frame float64 array)


@dataclass(frozen=True)
class ClippedStats:
    """Result of the iterative clipping: mean, standard deviation (n - 1) and number of pixels kept."""

    mean: float
    stdev: float
    n_kept: int


def percentiles(values: np.ndarray, fractions: tuple[float, ...]) -> np.ndarray:
    """Quantiles of a float array, linearly interpolated between order statistics at p (n - 1)."""
    values = np.asarray(values).ravel()
    n = values.size
    if n == 0:
        raise ValueError("quantiles of an empty array")
    if n == 1:
        return np.full(len(fractions), float(values[0]))
    indices = np.asarray(fractions, dtype=np.float64) * (n - 1)
    ranks = np.minimum(np.floor(indices).astype(np.int64), n - 2)
    weights = indices - ranks
    wanted = np.unique(np.concatenate([ranks, ranks + 1]))
    selected = False
    if values.dtype == np.float32 and wanted.size < 65535:
        from processccd import pixel_kernels

        selected, order_statistics = pixel_kernels.float32_order_statistics(values, wanted)
    if not selected:  # other dtypes, or NaN present
        order_statistics = np.partition(values, wanted)[wanted]
    order_statistics = order_statistics.astype(np.float64)
    lower = order_statistics[np.searchsorted(wanted, ranks)]
    upper = order_statistics[np.searchsorted(wanted, ranks + 1)]
    return lower + (upper - lower) * weights


def float32_at_least(value: float) -> np.float32:
    """Smallest float32 >= value: `a32 >= it` equals the exact comparison `a32 >= value`."""
    rounded = np.float32(value)
    return rounded if float(rounded) >= value else np.nextafter(rounded, np.float32(np.inf))


def float32_at_most(value: float) -> np.float32:
    """Largest float32 <= value."""
    rounded = np.float32(value)
    return rounded if float(rounded) <= value else np.nextafter(rounded, np.float32(-np.inf))


def _in_window(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Boolean lo <= values <= hi, exact for float32 values and float64 bounds."""
    if values.dtype == np.float32:
        return (values >= float32_at_least(lo)) & (values <= float32_at_most(hi))
    return (values >= lo) & (values <= hi)


class _Sums:
    """Count, sum and sum of squares of float64 offsets (values minus a reference)."""

    def __init__(self, offsets: np.ndarray) -> None:
        self.n = offsets.size
        self.s1 = float(offsets.sum())
        self.s2 = float(np.einsum("i,i->", offsets, offsets))  # not BLAS: no thread start-up

    def __add__(self, other: _Sums) -> _Sums:
        total = object.__new__(_Sums)
        total.n, total.s1, total.s2 = self.n + other.n, self.s1 + other.s1, self.s2 + other.s2
        return total


def _offsets_scratch(size: int) -> np.ndarray:
    """A float64 array of >= `size` elements, kept (per thread) from one call of `clipped_stats` to the next:
    the offsets of a full frame take ~20 MB, and first touching fresh pages for them each time costs more
    (page faults) than summing them."""
    scratch = getattr(_scratch, "offsets", None)
    if scratch is None or scratch.size < size:
        scratch = _scratch.offsets = np.empty(size)
    return scratch


def clipped_stats(values: np.ndarray, n_sigma: float = 3.0, n_iter: int = 3) -> ClippedStats:
    """afw MEANCLIP/STDEVCLIP: `n_iter` passes of mean and n - 1 variance over the pixels kept.

    Pass 1 keeps |v - median| <= n_sigma * IQR_TO_SIGMA * IQR; each later pass keeps |v - mean| <= n_sigma * sd
    with mean and sd from the previous pass. Sums are accumulated in float64 relative to the median. For
    speed the values well inside the first window (the "core") are summed once; a later pass only rescans
    the rest, as long as its window still contains the core (else it rescans everything).
    """
    values = np.asarray(values).ravel()
    if values.dtype not in (np.float32, np.float64):
        values = values.astype(np.float64)
    if values.size == 0:
        raise ValueError("clipped statistics of an empty array")
    from processccd import pixel_kernels

    q25, median, q75 = percentiles(values, (0.25, 0.5, 0.75))
    reference = float(median)
    centre, half_width = reference, n_sigma * IQR_TO_SIGMA * float(q75 - q25)
    core_lo, core_hi = centre - _CORE_FRACTION * half_width, centre + _CORE_FRACTION * half_width
    offsets = _offsets_scratch(values.size)
    n_core, fringe = pixel_kernels.split_core(values, core_lo, core_hi, reference, offsets)
    core = _Sums(offsets[:n_core])
    mean, stdev, n_kept = np.nan, np.nan, 0
    for _ in range(n_iter):
        lo, hi = centre - half_width, centre + half_width
        if lo <= core_lo and hi >= core_hi:
            sums = core + _Sums(fringe[_in_window(fringe, lo, hi)].astype(np.float64) - reference)
        else:
            sums = _Sums(values[_in_window(values, lo, hi)].astype(np.float64) - reference)
        n_kept = sums.n
        if n_kept == 0:
            return ClippedStats(np.nan, np.nan, 0)
        mean_offset = sums.s1 / n_kept
        mean = reference + mean_offset
        variance = (sums.s2 - sums.s1 * mean_offset) / (n_kept - 1) if n_kept > 1 else np.nan
        stdev = float(np.sqrt(max(variance, 0.0))) if n_kept > 1 else np.nan
        centre, half_width = mean, n_sigma * stdev
    return ClippedStats(float(mean), stdev, n_kept)


def clipped_mean(values: np.ndarray, n_sigma: float = 3.0, n_iter: int = 3) -> float:
    """afw MEANCLIP (see `clipped_stats`)."""
    return clipped_stats(values, n_sigma, n_iter).mean


def clipped_stdev(values: np.ndarray, n_sigma: float = 3.0, n_iter: int = 3) -> float:
    """afw STDEVCLIP (see `clipped_stats`)."""
    return clipped_stats(values, n_sigma, n_iter).stdev


@dataclass(frozen=True)
class BackgroundConfig:
    """Background estimation settings (meas_algorithms BackgroundConfig, with the SDSS bin size)."""

    bin_size: int = 512  # SDSS override (LSST default 256)
    statistic: str = "MEANCLIP"  # the only statistic the 2013 SDSS run used
    ignored_mask_planes: tuple[str, ...] = field(default=("EDGE", "DETECTED", "DETECTED_NEGATIVE"))
    n_sigma_clip: float = 3.0
    n_clip_iter: int = 3

    def __post_init__(self) -> None:
        if self.statistic != "MEANCLIP":
            raise ValueError(f"background statistic {self.statistic!r} is not supported (only MEANCLIP)")
        if self.bin_size <= 0:
            raise ValueError(f"background bin_size must be positive, not {self.bin_size}")


@dataclass
class BackgroundModel:
    """A background estimate: the full-frame model and the cell grid it was interpolated from."""

    image: np.ndarray  # float32 (H, W)
    cell_values: np.ndarray  # float64 (ny, nx) clipped means
    cell_centres_x: np.ndarray  # float64 (nx,)
    cell_centres_y: np.ndarray  # float64 (ny,)


def cell_edges(n_pixels: int, n_cells: int) -> np.ndarray:
    """Edges o_0 = 0 < e_0 < ... < e_{n-1} = N of the cells: e_i = min(((i + 1) N + n // 2) // n, N)."""
    ends = np.minimum((np.arange(1, n_cells + 1) * n_pixels + n_cells // 2) // n_cells, n_pixels)
    return np.concatenate([[0], ends]).astype(np.int64)


def cell_centres(edges: np.ndarray) -> np.ndarray:
    """Centre o_i + size_i / 2 - 0.5 of each cell (pixel-centre coordinates)."""
    return edges[:-1] + (edges[1:] - edges[:-1]) / 2.0 - 0.5


def natural_spline_weights(knots: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Matrix W (len(positions), len(knots)) with spline(positions) = W @ values for any knot values.

    The natural cubic spline is linear in the knot values; outside [knots[0], knots[-1]] it is continued
    as y_end + d * delta + d2 * delta**2 / 2 with the spline's end slope d and curvature d2.
    """
    from scipy.interpolate import CubicSpline  # on first use: reading the configuration needs no scipy

    knots = np.asarray(knots, dtype=np.float64)
    positions = np.asarray(positions, dtype=np.float64)
    spline = CubicSpline(knots, np.eye(knots.size), bc_type="natural", axis=0)
    weights = spline(np.clip(positions, knots[0], knots[-1]))
    for end, outside in ((knots[0], positions < knots[0]), (knots[-1], positions > knots[-1])):
        if np.any(outside):
            delta = (positions[outside] - end)[:, None]
            weights[outside] = spline(end) + spline(end, 1) * delta + 0.5 * spline(end, 2) * delta**2
    return weights


@lru_cache(maxsize=8)
def _axis_spline_weights(n_pixels: int, n_cells: int) -> np.ndarray:
    """Read-only `natural_spline_weights` from the centres of `n_cells` cells to every pixel of an axis of
    `n_pixels` (cached: every frame has the same grid)."""
    weights = natural_spline_weights(cell_centres(cell_edges(n_pixels, n_cells)), np.arange(n_pixels))
    weights.flags.writeable = False
    return weights


def estimate_background(
    image: np.ndarray,
    mask: np.ndarray | None,
    ignore_bits: int,
    bin_size: int = 512,
    n_sigma_clip: float = 3.0,
    n_clip_iter: int = 3,
) -> BackgroundModel:
    """Natural-spline background of `image` from clipped means of the pixels without `ignore_bits` set."""
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"background needs a 2-D image, not shape {image.shape}")
    height, width = image.shape
    nx, ny = width // bin_size + 1, height // bin_size + 1
    if min(nx, ny) < SPLINE_MIN_POINTS:
        raise CalibrationError(
            f"background: a {width}x{height} image with bin size {bin_size} gives a {nx}x{ny} grid; "
            f"a natural spline needs >= {SPLINE_MIN_POINTS} cells per axis"
        )
    x_edges, y_edges = cell_edges(width, nx), cell_edges(height, ny)
    from processccd.pixel_kernels import unmasked_values

    if mask is not None and ignore_bits != 0:
        image = np.ascontiguousarray(image, dtype=image.dtype.newbyteorder("="))  # native: compiled loops
        mask = np.ascontiguousarray(mask, dtype=np.asarray(mask).dtype.newbyteorder("="))
    cell_values = np.empty((ny, nx))
    for j in range(ny):
        for i in range(nx):
            if mask is None or ignore_bits == 0:
                values = image[y_edges[j] : y_edges[j + 1], x_edges[i] : x_edges[i + 1]]
            else:
                values = unmasked_values(image, mask, ignore_bits, y_edges[j], y_edges[j + 1], x_edges[i],
                                         x_edges[i + 1])
            cell_values[j, i] = clipped_mean(values, n_sigma_clip, n_clip_iter) if values.size else np.nan
    if not np.all(np.isfinite(cell_values)):
        bad = np.argwhere(~np.isfinite(cell_values)).tolist()
        raise CalibrationError(f"background: no usable pixels in grid cells (iy, ix) {bad}")
    centres_x, centres_y = cell_centres(x_edges), cell_centres(y_edges)
    along_y = _axis_spline_weights(height, ny) @ cell_values  # (H, nx)
    along_x_weights = _axis_spline_weights(width, nx).T
    model = np.empty((height, width), dtype=np.float32)
    for start in range(0, height, _MODEL_ROWS_PER_BLOCK):  # float64 rows, rounded block by block
        rows = slice(start, start + _MODEL_ROWS_PER_BLOCK)
        model[rows] = along_y[rows] @ along_x_weights
    return BackgroundModel(model, cell_values, centres_x, centres_y)
