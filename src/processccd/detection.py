"""Source detection as the LSST 2013 stack did it (meas_algorithms detection, afw FootprintSet).

measurement-spec.md §2.1 "Detection": smooth with a normalised separable Gaussian of the PSF width, threshold
at `threshold` x the clipped stdev of the smoothed image, 8-connected footprints numbered by afw's
raster-scan / alias rule, seed each at its first peak (afw's peak rule, with its 1-pixel margin from the
searched region: `_first_peaks`), grow them (Manhattan metric) only to set the DETECTED mask, mask the negative
detections, then re-estimate and subtract the background with the detections masked. The pixel loops
(smoothing, runs above threshold, growth) are compiled (`processccd.pixel_kernels`, imported on first use).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from processccd.background import (
    BackgroundConfig,
    BackgroundModel,
    clipped_stdev,
    estimate_background,
    float32_at_least,
    float32_at_most,
)
from processccd.image import mask_bit

# the afw mask plane bits of the 2013 stack that detection uses
MASK_BITS: dict[str, int] = {name: mask_bit(name) for name in
                             ("BAD", "SAT", "INTRP", "CR", "EDGE", "DETECTED", "DETECTED_NEGATIVE")}


@dataclass(frozen=True)
class DetectionConfig:
    """Detection settings (meas_algorithms SourceDetectionConfig defaults, SDSS background bin size)."""

    threshold: float = 5.0  # in units of the clipped stdev of the smoothed image ("stdev") or DN ("value")
    threshold_type: str = "stdev"
    include_multiplier: float = 1.0  # keep footprints with a smoothed pixel >= include_multiplier * threshold
    n_sigma_to_grow: float = 2.4  # DETECTED mask grown by int(n_sigma_to_grow * psf_sigma + 0.5) pixels
    kernel_size: int = 31  # width of the smoothing kernel (the PSF kernel width)
    min_pixels: int = 1
    re_estimate_background: bool = True
    bin_size: int = 512
    edge_margin: int | None = field(default=None, metadata={"doc": (
        "detect positive sources to this many px from the frame edges (smoothing kernel renormalised where "
        "it overhangs; pixels where it does not fit stay EDGE, so these sources get flags.pixel.edge, as in "
        "LSST); null = only where the whole kernel fits (2013); LSST 2020: 3")})

    def __post_init__(self) -> None:
        if self.threshold_type not in ("stdev", "value"):
            raise ValueError(f"threshold_type must be 'stdev' or 'value', not {self.threshold_type!r}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, not {self.kernel_size}")


@dataclass
class Footprints:
    """Ungrown positive footprints in emitted (source-id) order; pixel coordinates are full-frame."""

    peak_x: np.ndarray  # int64 (N,): position of the first peak (`_first_peaks`) of the smoothed image
    peak_y: np.ndarray
    peak_value: np.ndarray  # float64 (N,): smoothed value there
    bbox: np.ndarray  # int64 (N, 4): x0, y0, x1, y1 inclusive
    pixel_offsets: np.ndarray  # int64 (N + 1,): footprint i owns pixel_y/x[pixel_offsets[i]:pixel_offsets[i+1]]
    pixel_y: np.ndarray  # int64, grouped by footprint, raster order inside each
    pixel_x: np.ndarray

    def __len__(self) -> int:
        return self.peak_x.size

    def pixels(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(ys, xs) of footprint `index`, raster order."""
        span = slice(self.pixel_offsets[index], self.pixel_offsets[index + 1])
        return self.pixel_y[span], self.pixel_x[span]

    def label_image(self, shape: tuple[int, int]) -> np.ndarray:
        """int32 image of `shape`: 0 = no footprint, i + 1 = footprint i (made on demand, not kept)."""
        labels = np.zeros(shape, dtype=np.int32)
        labels[self.pixel_y, self.pixel_x] = np.repeat(np.arange(1, len(self) + 1, dtype=np.int32),
                                                       np.diff(self.pixel_offsets))
        return labels

    def runs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row, first x, last x) of the horizontal runs of footprint pixels (a run never spans two
        footprints: horizontal neighbours are 8-connected)."""
        new_run = np.ones(self.pixel_x.size, dtype=bool)
        new_run[1:] = (np.diff(self.pixel_y) != 0) | (np.diff(self.pixel_x) != 1)
        starts = np.flatnonzero(new_run)
        lengths = np.diff(np.append(starts, new_run.size))
        return self.pixel_y[starts], self.pixel_x[starts], self.pixel_x[starts] + lengths - 1

    def all_pixels(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(source_index, ys, xs) of every footprint pixel, sorted by source."""
        source_index = np.repeat(np.arange(len(self)), np.diff(self.pixel_offsets))
        return source_index, self.pixel_y, self.pixel_x


@dataclass
class DetectionResult:
    """What one detection stage produced."""

    footprints: Footprints
    threshold: float  # DN on the smoothed image
    background: np.ndarray  # float32 (H, W) re-estimated background that was subtracted (zeros if none)
    background_model: BackgroundModel | None
    image: np.ndarray  # float32 input image minus `background`
    mask: np.ndarray  # copy of the input mask with EDGE, DETECTED, DETECTED_NEGATIVE set
    n_positive: int


@dataclass
class _LabelledPixels:
    """Pixels of a binary image with their footprint index (emitted order), in raster order."""

    y: np.ndarray
    x: np.ndarray
    footprint: np.ndarray
    n_footprints: int


def gaussian_kernel_1d(sigma: float, size: int) -> np.ndarray:
    """Normalised 1-D Gaussian of width `sigma` sampled at integer offsets -(size//2)..size//2."""
    if not sigma > 0:
        raise ValueError(f"smoothing sigma must be positive, not {sigma}")
    offsets = np.arange(size) - size // 2
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def smooth_middle(image: np.ndarray, sigma: float, kernel_size: int) -> np.ndarray:
    """Image convolved with the normalised separable Gaussian, on the region shrunk by kernel_size // 2.

    Only that "middle" region is fully covered by the kernel (afw leaves the border invalid), so it is all
    that is returned: float32 of shape (H - 2 b, W - 2 b), b = kernel_size // 2. Kernel taps below 1e-12 of
    the central one are dropped (their contribution is far below float32 resolution). The arithmetic is
    that of scipy.ndimage.correlate1d along x, then y (float64 sums, float32 after each pass).
    """
    border = kernel_size // 2
    height, width = image.shape
    if height <= 2 * border or width <= 2 * border:
        raise ValueError(f"image {width}x{height} is too small for a {kernel_size}-pixel smoothing kernel")
    kernel = gaussian_kernel_1d(sigma, kernel_size)
    significant = np.flatnonzero(kernel >= 1e-12 * kernel.max())
    half = min(int(significant.max()) - border, border)
    taps = kernel[border - half : border + half + 1]
    from processccd.pixel_kernels import smooth_symmetric

    return smooth_symmetric(np.ascontiguousarray(image, dtype=np.float32), taps, border)


def smooth_to_edges(image: np.ndarray, sigma: float, kernel_size: int, margin: int, middle: np.ndarray
                    ) -> np.ndarray:
    """The smoothed image on the frame shrunk by `margin` px (float32): `middle` (smooth_middle's result) where
    the whole kernel fits, elsewhere the image correlated with the kernel renormalised to the pixels it
    covers (scipy.ndimage.correlate1d with zeros outside, divided by the kernel's sum inside), computed on
    the four border strips only."""
    from scipy import ndimage

    border = kernel_size // 2
    height, width = image.shape
    taps = gaussian_kernel_1d(sigma, kernel_size)
    weight_x = ndimage.correlate1d(np.ones(width), taps, mode="constant")
    weight_y = ndimage.correlate1d(np.ones(height), taps, mode="constant")
    data = np.asarray(image, dtype=np.float64)
    smoothed = np.zeros(image.shape, np.float32)
    smoothed[border:height - border, border:width - border] = middle

    def renormalised(rows: slice, columns: slice, out_rows: slice, out_columns: slice) -> None:
        """Smooth the block `rows` x `columns` (zeros beyond) and keep `out_rows` x `out_columns` of it
        (block coordinates), whose kernels reach past the block only where the image ends."""
        block = ndimage.correlate1d(ndimage.correlate1d(data[rows, columns], taps, axis=1, mode="constant"), taps,
                                    axis=0, mode="constant")[out_rows, out_columns]
        y0, x0 = rows.start + out_rows.start, columns.start + out_columns.start
        ys, xs = slice(y0, y0 + block.shape[0]), slice(x0, x0 + block.shape[1])
        smoothed[ys, xs] = block / (weight_y[ys, None] * weight_x[None, xs])

    reach = 2 * border  # input rows / columns the border strip's kernels touch
    renormalised(slice(0, reach), slice(0, width), slice(0, border), slice(0, width))
    renormalised(slice(height - reach, height), slice(0, width), slice(border, reach), slice(0, width))
    renormalised(slice(0, height), slice(0, reach), slice(border, height - border), slice(0, border))
    renormalised(slice(0, height), slice(width - reach, width), slice(border, height - border), slice(border, reach))
    return smoothed[margin:height - margin, margin:width - margin]


def _resolve(parent: np.ndarray) -> np.ndarray:
    """Follow parent pointers (parent[i] <= i chains) to their fixed points, vectorised."""
    parent = parent.copy()
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return parent
        parent = grand


def _label_pixels(image: np.ndarray, threshold: np.float32 | np.uint8) -> _LabelledPixels:
    """8-connected footprints of the pixels image >= threshold, numbered in afw FootprintSet emission order.

    afw scans rows upwards, x increasing; a pixel takes the label of the first labelled neighbour among
    left, lower-left, lower, lower-right, else a new label; if the lower-right neighbour's label L2 differs,
    root(L2) is aliased to root(current label) (and the pixel takes L2). Footprints come out in increasing
    resolved root label. At span level this means: a span starts a new label unless a previous-row span
    touches its first pixel (x0 - 1..x0 + 1); every other previous-row span it overlaps (x0 - 1..x1 + 1)
    is merged, in x order, under the root of the span's own set.
    """
    from processccd.pixel_kernels import threshold_spans

    width = image.shape[1]
    row, x0, x1 = threshold_spans(image, threshold)
    n_spans = row.size
    if n_spans == 0:
        empty = np.zeros(0, dtype=np.int64)
        return _LabelledPixels(empty, empty, empty, 0)
    stride = width + 2
    start_key, end_key = row * stride + x0, row * stride + x1
    # previous-row spans overlapping [x0 - 1, x1 + 1]: indices first_below .. past_below - 1
    first_below = np.searchsorted(end_key, (row - 1) * stride + x0 - 1, side="left")
    past_below = np.searchsorted(start_key, (row - 1) * stride + x1 + 1, side="right")
    n_below = np.maximum(past_below - first_below, 0)
    leftmost = np.minimum(first_below, n_spans - 1)
    continues = (n_below > 0) & (x0[leftmost] <= x0 + 1)
    start_label = np.cumsum(~continues)  # labels 1..K at spans that start one
    n_labels = int(start_label[-1])
    origin = _resolve(np.where(continues, leftmost, np.arange(n_spans)))
    element = start_label[origin]  # the label each span's first pixel received (its union-find element)

    # merge events, in raster order: span s absorbs every overlapped previous-row span but the one it continues
    n_events = n_below - continues
    event_span = np.repeat(np.arange(n_spans), n_events)
    event_offsets = np.arange(event_span.size) - np.repeat(np.cumsum(n_events) - n_events, n_events)
    event_below = first_below[event_span] + continues[event_span] + event_offsets
    child, parent = element[event_below], element[event_span]
    distinct = child != parent
    alias = list(range(n_labels + 1))
    for absorbed, absorber in zip(child[distinct].tolist(), parent[distinct].tolist(), strict=True):
        while alias[absorbed] != absorbed:
            absorbed = alias[absorbed]
        while alias[absorber] != absorber:
            absorber = alias[absorber]
        if absorbed != absorber:
            alias[absorbed] = absorber
    root = _resolve(np.array(alias, dtype=np.int64))
    roots = np.unique(root[1:])
    footprint_of_label = np.searchsorted(roots, root)
    span_footprint = footprint_of_label[element]

    lengths = x1 - x0 + 1
    pixel_span = np.repeat(np.arange(n_spans), lengths)
    pixel_x = x0[pixel_span] + np.arange(pixel_span.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return _LabelledPixels(row[pixel_span], pixel_x, span_footprint[pixel_span], int(roots.size))


def _build_footprints(
    pixels: _LabelledPixels, smoothed: np.ndarray, include_level: float, min_pixels: int, offset: int
) -> Footprints:
    """Keep the footprints with >= min_pixels pixels and a smoothed pixel >= include_level; collect them."""
    values = smoothed[pixels.y, pixels.x]
    n = pixels.n_footprints
    n_pix = np.bincount(pixels.footprint, minlength=n)
    n_included = np.bincount(pixels.footprint, weights=values >= float32_at_least(include_level), minlength=n)
    kept = (n_pix >= min_pixels) & (n_included > 0)
    new_index = np.cumsum(kept) - 1
    keep_pixel = kept[pixels.footprint]
    footprint = new_index[pixels.footprint[keep_pixel]]
    order = np.argsort(footprint, kind="stable")  # grouped by footprint, raster order within
    footprint = footprint[order]
    ys = pixels.y[keep_pixel][order] + offset
    xs = pixels.x[keep_pixel][order] + offset
    values = values[keep_pixel][order]
    n_kept = int(kept.sum())
    offsets = np.searchsorted(footprint, np.arange(n_kept + 1))
    if n_kept == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Footprints(empty, empty, np.zeros(0), np.zeros((0, 4), np.int64), offsets, ys, xs)
    starts = offsets[:-1]
    first = _first_peaks(smoothed, ys - offset, xs - offset, values, starts, np.diff(offsets))
    bbox = np.stack(
        [
            np.minimum.reduceat(xs, starts),
            np.minimum.reduceat(ys, starts),
            np.maximum.reduceat(xs, starts),
            np.maximum.reduceat(ys, starts),
        ],
        axis=1,
    )
    return Footprints(xs[first], ys[first], values[first].astype(np.float64), bbox, offsets, ys, xs)


def _first_peaks(smoothed: np.ndarray, ys: np.ndarray, xs: np.ndarray, values: np.ndarray, starts: np.ndarray,
                 counts: np.ndarray) -> np.ndarray:
    """Index (into ys/xs/values, grouped by footprint from `starts`, raster order within) of each footprint's
    first peak, as afw FootprintSet found and sorted them (measurement seeds on it).

    A peak is a pixel with no strictly larger 8-neighbour; pixels on the first and last row and column of
    the searched `smoothed` region are never peaks (afw's peak finder kept a 1-pixel margin from the edge
    of the image it searched). Peaks are sorted by decreasing value, ties in raster order; a footprint with
    no peak (its maximum lies on that margin and the values fall away from it) gets its maximum instead,
    ties to the first pixel in raster order.
    """
    height, width = smoothed.shape
    is_peak = (ys > 0) & (ys < height - 1) & (xs > 0) & (xs < width - 1)
    inner_y, inner_x, inner_value = ys[is_peak], xs[is_peak], values[is_peak]
    inner_peak = np.ones(inner_y.size, dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy or dx:
                inner_peak &= ~(smoothed[inner_y + dy, inner_x + dx] > inner_value)
    is_peak[is_peak] = inner_peak
    best_peak = np.maximum.reduceat(np.where(is_peak, values, -np.inf), starts)
    no_peak = best_peak == -np.inf
    best = np.where(no_peak, np.maximum.reduceat(values, starts), best_peak)
    eligible = (values == np.repeat(best, counts)) & (is_peak | np.repeat(no_peak, counts))
    at_best = np.flatnonzero(eligible)
    return at_best[np.searchsorted(at_best, starts)]


def _negative_runs(smoothed: np.ndarray, level: float, include_level: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs (row, first x, last x) of the negative footprints (smoothed <= -level) that reach <= -include_level
    somewhere."""
    from scipy import ndimage

    from processccd.pixel_kernels import threshold_spans

    if include_level <= level:
        return threshold_spans(smoothed, float32_at_most(-level), True)
    strong_pixels = smoothed <= float32_at_most(-include_level)
    if not strong_pixels.any():
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    below = smoothed <= float32_at_most(-level)
    labels, n = ndimage.label(below, structure=np.ones((3, 3), dtype=bool))
    strong = np.zeros(n + 1, dtype=bool)
    strong[labels[strong_pixels]] = True
    return threshold_spans(strong[labels].view(np.uint8), np.uint8(1))


def detect_sources(
    image: np.ndarray,
    mask: np.ndarray,
    psf_sigma: float,
    config: DetectionConfig | None = None,
    mask_bits: dict[str, int] | None = None,
    logger_name: str = "processCcd.detection",
) -> DetectionResult:
    """One detection stage (spec §2.1 Detection steps 1-8) on a background-subtracted image.

    `mask` is not modified; the result carries an updated copy. `psf_sigma` is the PSF's adaptive-moment
    Gaussian width (pixels): it sets the smoothing kernel and the DETECTED growth radius.
    """
    from processccd.pixel_kernels import or_diamonds

    config = config or DetectionConfig()
    bits = {**MASK_BITS, **(mask_bits or {})}
    edge, detected, detected_negative = bits["EDGE"], bits["DETECTED"], bits["DETECTED_NEGATIVE"]
    image = np.asarray(image, dtype=np.float32)
    mask = np.array(mask, dtype=np.asarray(mask).dtype.newbyteorder("="), copy=True)  # native: compiled loops
    if mask.shape != image.shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {image.shape}")
    np.bitwise_and(mask, ~np.array(detected | detected_negative, dtype=mask.dtype), out=mask)
    border = config.kernel_size // 2

    smoothed = smooth_middle(image, psf_sigma, config.kernel_size)
    height, width = image.shape
    for outside_middle in (np.s_[:border], np.s_[height - border :], np.s_[:, :border], np.s_[:, width - border :]):
        np.bitwise_or(mask[outside_middle], edge, out=mask[outside_middle])

    threshold = config.threshold * clipped_stdev(smoothed) if config.threshold_type == "stdev" else config.threshold
    include_level = config.include_multiplier * threshold
    if not threshold > 0:  # a noiseless (e.g. constant) image: nothing is significant
        logging.getLogger(logger_name).warning("threshold %g is not positive (no noise): nothing detected", threshold)
        threshold = include_level = np.inf

    if config.edge_margin is not None and config.edge_margin < border:
        margin = max(config.edge_margin, 0)
        to_edges = smooth_to_edges(image, psf_sigma, config.kernel_size, margin, smoothed)
        pixels = _label_pixels(to_edges, float32_at_least(threshold))
        footprints = _build_footprints(pixels, to_edges, include_level, config.min_pixels, margin)
    else:
        pixels = _label_pixels(smoothed, float32_at_least(threshold))
        footprints = _build_footprints(pixels, smoothed, include_level, config.min_pixels, border)
    n_grow = int(config.n_sigma_to_grow * psf_sigma + 0.5)
    or_diamonds(mask, *footprints.runs(), n_grow, detected)
    rows, firsts, lasts = _negative_runs(smoothed, threshold, include_level)
    or_diamonds(mask, rows + border, firsts + border, lasts + border, n_grow, detected_negative)

    logging.getLogger(logger_name).info(
        "Detected %d positive sources to %g sigma", len(footprints), config.threshold
    )
    model = None
    if config.re_estimate_background:
        background_config = BackgroundConfig(bin_size=config.bin_size)
        ignore = 0
        for plane in background_config.ignored_mask_planes:
            ignore |= bits[plane]
        model = estimate_background(image, mask, ignore, config.bin_size)
    background = np.zeros(image.shape, dtype=np.float32) if model is None else model.image
    return DetectionResult(
        footprints=footprints,
        threshold=float(threshold),
        background=background,
        background_model=model,
        image=image - background,
        mask=mask,
        n_positive=len(footprints),
    )
