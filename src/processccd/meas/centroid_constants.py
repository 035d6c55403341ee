"""Constants of centroid.gaussian's CURFIT fit (the 2013 twodg rules), shared by the numpy fit
(`centroid.gaussian_centroid`) and the compiled one (`centroid_kernels`)."""

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
