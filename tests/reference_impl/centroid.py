"""centroid.sdss one source at a time: the reference of `processccd.meas.centroid.sdss_centroid_sources`,
which measures every source of an image in one compiled call with the same values bit for bit."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from processccd.meas.centroid import KERNEL_SIZE
from processccd.psf import Psf
from reference_impl.psf import normalized_kernel


@dataclass(frozen=True)
class SdssCentroidResult:
    """centroid.sdss: position (px) and the variances of x and y (px²); flag set on failure."""

    x: float
    y: float
    err_xx: float
    err_yy: float
    flag: bool


def sdss_centroid(
    image: np.ndarray, variance: np.ndarray, x_peak: int, y_peak: int, psf: Psf, psf_sigma: float
) -> SdssCentroidResult:
    """centroid.sdss at the peak pixel (x_peak, y_peak) (measurement-spec.md §3).

    The stamp around the peak is binned, smoothed with the local unit-sum PSF kernel and the maximum
    found from the central 3×3 (quadratic, then quartic refinement); the binning doubles along an axis
    whose width or offset is too large for the bin (up to a factor 16), compiled in
    `centroid_kernels.sdss_centroid_kernel`. `psf_sigma` is the adaptive-moment width of the PSF at the
    peak. On failure (stamp leaves the image, no maximum, ...) the result is the peak pixel with NaN
    errors and `flag` set.
    """
    from processccd.meas import centroid_kernels

    x_peak, y_peak = int(x_peak), int(y_peak)
    if not psf_sigma > 0.0:
        raise ValueError(f"the PSF width must be positive, got {psf_sigma}")
    failed = SdssCentroidResult(x=float(x_peak), y=float(y_peak), err_xx=math.nan, err_yy=math.nan, flag=True)
    height, width = image.shape
    if not (0 <= x_peak < width and 0 <= y_peak < height):
        return failed
    kernel = normalized_kernel(psf, x_peak, y_peak)
    if kernel.shape != (KERNEL_SIZE, KERNEL_SIZE):
        return failed
    neff = kernel.sum() ** 2 / (kernel * kernel).sum()
    result = np.empty(4)
    outcome = centroid_kernels.sdss_centroid_kernel(image, variance, x_peak, y_peak, kernel, float(neff),
                                                    float(psf_sigma), result)
    if outcome != centroid_kernels.OK:
        return failed
    x, y, err_xx, err_yy = result.tolist()
    return SdssCentroidResult(x=x, y=y, err_xx=err_xx, err_yy=err_yy, flag=False)
