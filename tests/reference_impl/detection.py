"""The label image of a binary image and its Manhattan dilation: references of what `processccd.detection`
does on runs (`_label_pixels` into `Footprints`, `pixel_kernels.or_diamonds` into the mask)."""

from __future__ import annotations

import numpy as np

from processccd.detection import _label_pixels


def lsst_footprint_labels(binary: np.ndarray) -> np.ndarray:
    """int32 label image of the 8-connected footprints of `binary`: 0 = none, i + 1 = i-th emitted."""
    pixels = _label_pixels(np.ascontiguousarray(binary, dtype=bool).view(np.uint8), np.uint8(1))
    labels = np.zeros(np.shape(binary), dtype=np.int32)
    labels[pixels.y, pixels.x] = pixels.footprint + 1
    return labels


def grow_diamond(binary: np.ndarray, radius: int) -> np.ndarray:
    """Dilation by the Manhattan ball |dx| + |dy| <= radius, clipped to the array."""
    from processccd.pixel_kernels import or_diamonds, threshold_spans

    binary = np.ascontiguousarray(binary, dtype=bool)
    grown = np.zeros(binary.shape, dtype=np.uint8)
    or_diamonds(grown, *threshold_spans(binary.view(np.uint8), np.uint8(1)), radius, 1)
    return grown.view(bool)
