"""Constants of the multishapelet fits shared by `model_flux` and the compiled fits (`model_flux_kernels`)."""

import math

MAX_LOG_RADIUS = math.log(1e4)  # ellipse radii are capped at 10^4 px (the fit then fails the area test)
DEGENERATE_COMBO = 1e-8  # 1 - |cos| of the exp and dev model vectors below which they are one model
