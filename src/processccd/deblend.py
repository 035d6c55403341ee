"""Segmentation of the detection footprints: deblended children (photutils) and SExtractor ellipses (sep).

Deblending (`deblend_labels`): photutils.segmentation.deblend_sources — multi-thresholding and watershed —
on the image smoothed by half the PSF sigma, within the detection footprints that hold two or more local
maxima. A footprint split into two or more segments becomes a parent whose children are the segments, each
made of the footprint's pixels of its segment (the segments partition the footprint).

Why photutils and not sep's multi-threshold deblending (bench/deblend_blends.py, 200 synthetic pairs of
PSF stars 1.5-4 FWHM apart, S/N 20-200): sep deblends only the filtered image it detects on — given a
segmentation map it does not deblend — and the detection filter (the PSF) erases the saddle between stars
under ~2 FWHM apart; photutils deblends the footprints detection made, on an image of our choosing.

Ellipses (`sep_moments`): sep.extract analysing the given segmentation (the footprints, or the children)
on the image filtered as detection smooths it, at the detection threshold — SExtractor's isophotal moments
(A_IMAGE, B_IMAGE, THETA_IMAGE), the shapes of its Kron apertures.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from processccd.detection import Footprints, smooth_middle

SEP_FIELDS = ("x", "y", "x2", "y2", "xy", "cflux", "xcpeak", "ycpeak", "cpeak")


@dataclass(frozen=True)
class Segmentation:
    """The footprints' segmentation: children (as Footprints) with their parent index, and one second-moment
    ellipse per parent and child (the sources in the order parents, then children)."""

    children: Footprints
    child_parent: np.ndarray  # int64 (M,): index of each child's parent footprint
    moments: np.ndarray  # float64 (N + M, 3): x2, y2, xy of each parent and child (NaN: no sep object)

    @property
    def n_children(self) -> np.ndarray:
        """deblend.nchild of the parents (0: not deblended)."""
        return np.bincount(self.child_parent, minlength=len(self.moments) - len(self.child_parent))


def deblend_labels(image: np.ndarray, footprints: Footprints, psf_sigma: float, smoothing: float, nlevels: int,
                   contrast: float, min_pixels: int = 5) -> np.ndarray:
    """Label of every footprint pixel (in `Footprints.all_pixels` order) after photutils' deblend_sources:
    multi-thresholding (`nlevels` exponential levels, `contrast`) and watershed of the image smoothed by a
    Gaussian of `smoothing` x psf_sigma (0: unsmoothed), within each footprint that some threshold splits
    into two 8-connected components of `min_pixels` each (`pixel_kernels.split_possible`: photutils splits
    no other, so this only spares it the work). Labels are arbitrary positive integers; a footprint that was
    not split keeps one label."""
    from astropy.utils.exceptions import AstropyUserWarning
    from photutils.segmentation import SegmentationImage, deblend_sources

    from processccd.pixel_kernels import split_possible

    data = _smoothed(image, smoothing * psf_sigma, 4.0) if smoothing > 0 else np.asarray(image, np.float32)
    labels = footprints.label_image(image.shape)
    source, ys, xs = footprints.all_pixels()
    candidates = np.flatnonzero(split_possible(ys, xs, data[ys, xs], source, len(footprints), image.shape,
                                               min_pixels)) + 1
    if len(candidates) == 0:
        return labels[ys, xs].astype(np.int64)
    with warnings.catch_warnings():  # "mode changed from exponential to linear" for footprints reaching <= 0
        warnings.simplefilter("ignore", AstropyUserWarning)
        deblended = deblend_sources(data, SegmentationImage(labels), min_pixels, labels=candidates,
                                    n_levels=nlevels, contrast=contrast, mode="exponential", relabel=False,
                                    progress_bar=False)
    return deblended.data[ys, xs].astype(np.int64)


def _smoothed(image: np.ndarray, sigma: float, extent: float) -> np.ndarray:
    """float32 image correlated with a unit-sum Gaussian of `sigma` truncated at `extent` sigma (compiled,
    `detection.smooth_middle`); 0 within the kernel's half-width of the edges."""
    half = int(np.ceil(extent * sigma))
    smoothed = np.zeros(image.shape, np.float32)
    smoothed[half:image.shape[0] - half, half:image.shape[1] - half] = smooth_middle(image, sigma, 2 * half + 1)
    return smoothed


def segment_footprints(image: np.ndarray, footprints: Footprints, threshold: float, psf_sigma: float,
                       deblend: bool, nlevels: int = 32, contrast: float = 0.005, smoothing: float = 0.5
                       ) -> Segmentation:
    """Children of the footprints photutils splits (`deblend`, `deblend_labels`), and every source's sep
    ellipse: sep.extract analysing the given segmentation (footprints, then children) as SExtractor would."""
    n = len(footprints)
    source, ys, xs = footprints.all_pixels()
    if deblend:
        label = deblend_labels(image, footprints, psf_sigma, smoothing, nlevels, contrast)
        pairs = np.unique(np.column_stack([source, label]), axis=0)
        split = np.bincount(pairs[:, 0], minlength=n) >= 2
        child_pairs = pairs[split[pairs[:, 0]]]
    else:
        label, child_pairs = source, np.zeros((0, 2), np.int64)
    child_parent, child_label = child_pairs[:, 0].astype(np.int64), child_pairs[:, 1]
    children = _child_footprints(image, source, ys, xs, label, child_parent, child_label)
    moments = np.full((n + len(child_parent), 3), np.nan)
    filtered = _smoothed(image, psf_sigma, 3.0)
    moments[:n] = sep_moments(image, footprints, threshold, psf_sigma, filtered)
    if len(child_parent):
        moments[n:] = sep_moments(image, children, threshold, psf_sigma, filtered)
    return Segmentation(children, child_parent, moments)


def sep_moments(image: np.ndarray, footprints: Footprints, threshold: float, psf_sigma: float,
                filtered: np.ndarray | None = None) -> np.ndarray:
    """(x2, y2, xy) of each footprint as sep.extract measures the objects of a given segmentation map on the
    image filtered as SExtractor filters it (a unit-sum Gaussian of `psf_sigma` to 3 sigma; `filtered`: that
    image, when already made); NaN for a footprint sep returns no object for."""
    import sep

    if filtered is None:
        filtered = _smoothed(image, psf_sigma, 3.0)
    labels = footprints.label_image(image.shape)
    objects, segmap = sep.extract(filtered, float(threshold), filter_kernel=None, minarea=1, deblend_nthresh=1,
                                  clean=False, segmentation_map=labels)
    moments = np.full((len(footprints), 3), np.nan)
    if len(objects):
        index = segmap[footprints.peak_y, footprints.peak_x].astype(np.int64) - 1
        ok = index >= 0
        moments[ok] = np.column_stack([objects["x2"][index[ok]], objects["y2"][index[ok]], objects["xy"][index[ok]]])
    return moments


def _child_footprints(image: np.ndarray, source: np.ndarray, ys: np.ndarray, xs: np.ndarray, label: np.ndarray,
                      child_parent: np.ndarray, child_label: np.ndarray) -> Footprints:
    """The children's pixels (their parent's pixels of their label), raster order, and their peaks (the
    brightest pixel of `image` in each)."""
    m = len(child_label)
    if m == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Footprints(empty, empty, np.zeros(0), np.zeros((0, 4), np.int64), np.zeros(1, np.int64), empty, empty)
    stride = int(label.max()) + 1
    key = source * stride + label  # (footprint, label) of each pixel
    child_key = child_parent * stride + child_label  # sorted (np.unique order)
    position = np.clip(np.searchsorted(child_key, key), 0, m - 1)
    is_child_pixel = child_key[position] == key
    child = position[is_child_pixel]
    sort = np.argsort(child, kind="stable")  # grouped by child, raster order kept within each
    cy, cx, child = ys[is_child_pixel][sort], xs[is_child_pixel][sort], child[sort]
    offsets = np.searchsorted(child, np.arange(m + 1))
    starts = offsets[:-1]
    values = image[cy, cx].astype(np.float64)
    peak_value = np.maximum.reduceat(values, starts)
    at_peak = np.flatnonzero(values == np.repeat(peak_value, np.diff(offsets)))
    first = at_peak[np.searchsorted(at_peak, starts)]
    bbox = np.stack([np.minimum.reduceat(cx, starts), np.minimum.reduceat(cy, starts),
                     np.maximum.reduceat(cx, starts), np.maximum.reduceat(cy, starts)], axis=1)
    return Footprints(cx[first], cy[first], peak_value, bbox, offsets, cy, cx)


def concatenate(parents: Footprints, children: Footprints) -> Footprints:
    """The footprints of parents then children, as one Footprints (pixels of the children repeat the parents')."""
    offsets = np.concatenate([parents.pixel_offsets[:-1], children.pixel_offsets + parents.pixel_offsets[-1]])
    return Footprints(np.concatenate([parents.peak_x, children.peak_x]),
                      np.concatenate([parents.peak_y, children.peak_y]),
                      np.concatenate([parents.peak_value, children.peak_value]),
                      np.concatenate([parents.bbox, children.bbox]), offsets,
                      np.concatenate([parents.pixel_y, children.pixel_y]),
                      np.concatenate([parents.pixel_x, children.pixel_x]))
