"""Constants of the adaptive-moment iteration (shape.sdss, flux.gaussian), shared by the numpy iteration
(`shape`) and the compiled one (`moments_kernels`)."""

import numpy as np

START_MOMENT = 1.5  # initial weight W = (1.5, 0, 1.5)
BOX_SIGMAS = 4.0  # box half-size = 4 sqrt(max(Wxx, Wyy)) (+ 0.5 for the integer limits)
MAX_BOX_RADIUS = 1000.0
MAX_EXPONENT = 14.0  # pixels with r^T W^-1 r above this get no weight
MAX_CORNER_EXPONENT = 9.0  # sub-sampled pixels are used only if all four corners are within this
SUBSAMPLE_LIMIT = 0.25  # sub-sample when Wxx or Wyy < 0.25 or det W < 0.25^2
SUBSAMPLE_OFFSETS = np.array([-0.375, -0.125, 0.125, 0.375])
MIN_DETERMINANT = float(np.finfo(np.float32).eps)  # smaller determinants count as singular
MAX_INVERSE_WEIGHT = 1e6  # W^-1 elements beyond this are rejected (W absurdly small)
