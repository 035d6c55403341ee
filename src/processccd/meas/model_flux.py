"""multishapelet.{psf,exp,dev,combo}: galaxy-model fluxes (measurement-spec.md §3, LSST 2013 multiShapelet).

PSF model (multishapelet.psf): an elliptical double Gaussian (outer radius 2x inner, outer peak 0.1x inner)
fitted to the unit-sum PSF image, then order-2 Gauss-Hermite expansions of both components (same ellipses)
by linear least squares. We represent each order-2 expansion by the equivalent basis of Gaussian
derivatives {G, dG/dx, dG/dy, d2G/dx2, d2G/dxdy, d2G/dy2} (the same 6-dimensional function space, so the
same fitted function), because Gaussian derivatives convolve in closed form:
    N_A (x) d^a N_B = d^a N_{A+B}        (N_C = unit-flux Gaussian of covariance C).
The "Gaussian part" of each component (its order-0 Gauss-Hermite coefficient as a flux) drives the
nonlinear galaxy fit, as in 2013; the full expansion enters the final linear amplitude.

Galaxy profiles: mixtures of Gaussians approximating the SDSS-style exponential and de Vaucouleurs
profiles (Hogg & Lang 2013, PASP 125, 719, the "exp" and "dev" mixtures of The Tractor), in units of the
half-light radius: component g has flux a_g and covariance v_g Q for the half-light ellipse Q.

Fit (per profile): pixels = ungrown footprint grown by 5 px (disk) U the initial ellipse scaled x4, minus
BAD|SAT|INTRP|CR pixels; constant weight 1/sqrt(mean variance); nonlinear Levenberg-Marquardt fit of the
ellipse (conformal shear eta1, eta2, log determinant radius) with the amplitude solved linearly at each
step; then F = (m.d)/(m.m), E = 1/|m| with m the weighted PSF-convolved unit-flux model.

Implementation: each fit is one call of compiled code (`model_flux_kernels`): every LM evaluation computes
the Gaussians once (by recurrence along pixel rows), the model and its ellipse derivatives with one matrix
product (the ellipse Jacobian folded into per-Gaussian coefficients), and reduces the pixels to the 5 x 5 Gram
matrix of (model, derivatives, data), from which the variable-projection Hessian and gradient follow exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from processccd.image import mask_bit
from processccd.meas import model_flux_kernels
from processccd.psf import Psf

# Hogg & Lang (2013) mixture-of-Gaussians approximations (8 components each; amplitudes and variances in units
# of the half-light radius squared), the "tractor-exponential" / "tractor-devaucouleur" profiles of 2013.
EXP_AMPLITUDES = np.array([3.31636565e-05, 1.06478564e-03, 1.33260624e-02, 1.06217866e-01, 6.09924868e-01,
                           2.43600369e00, 5.34553250e00, 3.41379672e00])
EXP_VARIANCES = np.array([4.91509189e-05, 7.91283025e-04, 5.06909854e-03, 2.30018199e-02, 8.50523831e-02,
                          2.73398885e-01, 7.93675135e-01, 2.17065603e00])
DEV_AMPLITUDES = np.array([1.36305372e-02, 1.08889599e-01, 3.68235229e-01, 9.26647361e-01, 2.00002437e00,
                           3.77384257e00, 6.01053703e00, 7.22968202e00])
DEV_VARIANCES = np.array([1.34654444e-04, 5.04128747e-04, 1.88518562e-03, 7.20439754e-03, 2.87959626e-02,
                          1.25118904e-01, 6.38235086e-01, 4.76437813e00])

BAD_PIXEL_BITS = mask_bit("BAD") | mask_bit("SAT") | mask_bit("INTRP") | mask_bit("CR")
MAX_LOG_RADIUS = math.log(1e4)  # ellipse radii are capped at 10^4 px (the fit then fails the area test)
DERIVATIVE_TERMS = 6  # G, Gx, Gy, Gxx, Gxy, Gyy


@dataclass(frozen=True)
class Profile:
    """A circular mixture of Gaussians: fluxes (sum 1) and variances relative to the ellipse quadrupole."""

    name: str
    fluxes: np.ndarray
    variances: np.ndarray

    @classmethod
    def normalized(cls, name: str, amplitudes: np.ndarray, variances: np.ndarray) -> Profile:
        return cls(name, amplitudes / amplitudes.sum(), variances.copy())

    @property
    def mean_variance(self) -> float:
        """Second moment per axis of the unit-flux profile for Q = identity."""
        return float(self.fluxes @ self.variances)


EXPONENTIAL = Profile.normalized("exp", EXP_AMPLITUDES, EXP_VARIANCES)
DE_VAUCOULEURS = Profile.normalized("dev", DEV_AMPLITUDES, DEV_VARIANCES)


@dataclass(frozen=True)
class ModelFluxConfig:
    """multiShapelet settings (2013 defaults)."""

    grow_footprint: int = 5
    radius_input_factor: float = 4.0
    max_bad_pixel_fraction: float = 0.1
    bad_pixel_bits: int = BAD_PIXEL_BITS
    min_initial_radius: float = 0.5  # initial ellipse never smaller than this x PSF (inner) trace radius
    min_radius: float = 1e-4
    min_axis_ratio: float = 1e-4
    tau: float = 1e-2
    gradient_tolerance: float = 1e-4
    max_iterations: int = 200
    psf_radius_ratio: float = 2.0
    psf_peak_ratio: float = 0.1
    psf_initial_radius: float = 1.5
    psf_min_radius: float = 0.1
    psf_min_axis_ratio: float = 0.1
    psf_tau: float = 1e-6
    psf_gradient_tolerance: float = 1e-6
    use_shapelet_terms: bool = True  # False: the PSF is the plain double Gaussian (for comparisons)
    # PSF factors p_X / p_psf are fitted once per cell of this size (pixels) and rescaled by the exact p_psf at
    # each source (2013 fitted them per source). Measured on 6377 i, 40 random positions: max deviation from
    # the per-source fit 4.8e-4 with 64-px cells, 4.1e-4 with 256-px cells (the sub-pixel phase dominates).
    psf_factor_cell_size: int = 256


@dataclass(frozen=True)
class PsfModel:
    """Double-shapelet PSF model: per component its covariance and derivative-basis coefficients."""

    covariances: np.ndarray  # (K, 2, 2)
    coefficients: np.ndarray  # (K, 6): G, Gx, Gy, Gxx, Gxy, Gyy
    gaussian_fluxes: np.ndarray  # (K,) order-0 Gauss-Hermite part of each component, as a flux

    @property
    def inner(self) -> np.ndarray:
        return self.covariances[0]


@dataclass(frozen=True)
class ProfileFit:
    """One profile fit: raw flux, error, flags and the half-light ellipse (Qxx, Qxy, Qyy)."""

    flux: float = math.nan
    flux_err: float = math.nan
    flag: bool = True
    ellipse: tuple[float, float, float] = (math.nan, math.nan, math.nan)
    n_pixels: int = 0
    max_iter: bool = False


@dataclass(frozen=True)
class ModelFluxResult:
    """Raw (not PSF-factor scaled, not aperture corrected) multishapelet exp / dev / combo fluxes."""

    exp: ProfileFit = field(default_factory=ProfileFit)
    dev: ProfileFit = field(default_factory=ProfileFit)
    combo_flux: float = math.nan
    combo_flux_err: float = math.nan
    combo_flag: bool = True

    @property
    def exp_flux(self) -> float:
        return self.exp.flux

    @property
    def dev_flux(self) -> float:
        return self.dev.flux


@dataclass(frozen=True)
class ModelFluxPsfFactors:
    """PSF factors p of exp / dev / combo: the same fits on the peak-normalised PSF image."""

    exp: float
    dev: float
    combo: float


class FitRegionError(Exception):
    """The fit region leaves the image or has too many bad pixels (the 2013 code threw: NaN flux)."""


# ---------------------------------------------------------------------------------------------- ellipses

Ellipse = tuple[float, float, float]  # (Qxx, Qxy, Qyy)


def _ellipse_from_parameters(p: Sequence[float]) -> Ellipse:
    """Quadrupole (Qxx, Qxy, Qyy) from (eta1, eta2, ln r): r^2 times the unit-determinant matrix exp(eta . sigma)
    (conformal shear eta, axis ratio exp(-|eta|); r the determinant radius)."""
    eta1, eta2, log_r = p
    eta = math.hypot(eta1, eta2)
    r2 = math.exp(2.0 * log_r)
    if eta < 1e-12:
        return r2, 0.0, r2
    c, s = math.cosh(eta), math.sinh(eta) / eta
    return r2 * (c + s * eta1), r2 * (s * eta2), r2 * (c - s * eta1)


def _parameters_from_ellipse(q: np.ndarray) -> list[float]:
    """Inverse of `_ellipse_from_parameters` (q a 2x2 matrix)."""
    r2 = math.sqrt(q[0, 0] * q[1, 1] - q[0, 1] ** 2)
    m = q / r2
    eta = math.acosh(max(0.5 * (m[0, 0] + m[1, 1]), 1.0))
    if eta < 1e-12:
        return [0.0, 0.0, 0.5 * math.log(r2)]
    s = math.sinh(eta) / eta
    return [float(0.5 * (m[0, 0] - m[1, 1]) / s), float(m[0, 1] / s), 0.5 * math.log(r2)]


def _ellipse_jacobian(p: Sequence[float]) -> tuple[tuple[float, float, float], ...]:
    """d(Qxx, Qxy, Qyy)/d(eta1, eta2, ln r) as rows Qxx, Qxy, Qyy of derivatives by eta1, eta2, ln r."""
    eta1, eta2, log_r = p
    eta = math.hypot(eta1, eta2)
    r2 = math.exp(2.0 * log_r)
    if eta < 1e-4:  # series of cosh, sinh(eta)/eta and the derivative factor (c - s) / eta^2
        c, s, ds = 1.0 + 0.5 * eta * eta, 1.0 + eta * eta / 6.0, 1.0 / 3.0 + eta * eta / 30.0
    else:
        c, s = math.cosh(eta), math.sinh(eta) / eta
        ds = (c - s) / (eta * eta)
    ds1, ds2 = ds * eta1, ds * eta2  # d s / d eta_i
    return ((r2 * (s * eta1 + ds1 * eta1 + s), r2 * (s * eta2 + ds2 * eta1), r2 * (2.0 * (c + s * eta1))),
            (r2 * (ds1 * eta2), r2 * (ds2 * eta2 + s), r2 * (2.0 * s * eta2)),
            (r2 * (s * eta1 - ds1 * eta1 - s), r2 * (s * eta2 - ds2 * eta1), r2 * (2.0 * (c - s * eta1))))


def _matrix(q: Ellipse) -> np.ndarray:
    return np.array([[q[0], q[1]], [q[1], q[2]]])


def _trace_radius(q: np.ndarray) -> float:
    return math.sqrt(max(0.5 * (q[0, 0] + q[1, 1]), 0.0))


def _axis_ratio(q: np.ndarray) -> float:
    half_trace = 0.5 * (q[0, 0] + q[1, 1])
    split = math.hypot(0.5 * (q[0, 0] - q[1, 1]), q[0, 1])
    major, minor = half_trace + split, half_trace - split
    return math.sqrt(minor / major) if major > 0 and minor > 0 else 0.0


def _area(q: np.ndarray) -> float:
    det = q[0, 0] * q[1, 1] - q[0, 1] ** 2
    return math.pi * math.sqrt(det) if det > 0 else 0.0


DEGENERATE_COMBO = 1e-8  # 1 - |cos| of the exp and dev model vectors below which they are one model


@dataclass
class _FitOutcome:
    parameters: list[float]
    amplitude: float
    max_iter: bool


def _fit_ellipse(dx: np.ndarray, dy: np.ndarray, data: np.ndarray, weight: float, scales: np.ndarray,
                 offsets: np.ndarray, fluxes: np.ndarray, p0: Sequence[float], lower: Sequence[float],
                 upper: Sequence[float], tau: float, gtol: float, max_iterations: int) -> _FitOutcome:
    """Weighted data d fitted by A * weight * sum_k f_k N(s_k Q + P_k) over the ellipse parameters p of Q
    (`_ellipse_from_parameters`; offsets rows (Pxx, Pxy, Pyy)), with the amplitude A solved linearly at every p
    (variable projection), by box-clipped Levenberg-Marquardt with Nielsen damping (compiled:
    `model_flux_kernels.fit_ellipse`). Raises FloatingPointError when the model vanishes at the start."""
    status, p, amplitude, max_iter = model_flux_kernels.fit_ellipse(
        np.ascontiguousarray(dx, dtype=np.float64), np.ascontiguousarray(dy, dtype=np.float64),
        np.ascontiguousarray(data, dtype=np.float64), float(weight), np.ascontiguousarray(scales, dtype=np.float64),
        np.ascontiguousarray(offsets, dtype=np.float64), np.ascontiguousarray(fluxes, dtype=np.float64),
        np.asarray(p0, dtype=np.float64), np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64),
        float(tau), float(gtol), int(max_iterations))
    if status == model_flux_kernels.STATUS_EMPTY_MODEL:
        raise FloatingPointError("empty model")
    return _FitOutcome([float(v) for v in p], float(amplitude), bool(max_iter))


# ------------------------------------------------------------------------------------------- PSF model


def _psf_offsets(psf: Psf, x: float, y: float, image: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit-sum PSF image at (x, y) flattened, with pixel offsets from (x, y); `image` is
    `psf.compute_image(x, y)` when the caller has it already."""
    image = psf.unit_sum_image(x, y) if image is None else image / image.sum()
    size = image.shape[0]
    grid = np.arange(size, dtype=np.float64) - size // 2
    dx = np.tile(grid - (x - math.floor(x + 0.5)), size)
    dy = np.repeat(grid - (y - math.floor(y + 0.5)), size)
    return image.ravel(), dx, dy


def fit_psf_model(psf: Psf, x: float, y: float, config: ModelFluxConfig | None = None,
                  image: np.ndarray | None = None) -> PsfModel:
    """multishapelet.psf at (x, y): double Gaussian ellipse fit, then the order-2 expansions (linear).
    `image` is `psf.compute_image(x, y)` when the caller has it already."""
    config = config or ModelFluxConfig()
    data, dx, dy = _psf_offsets(psf, x, y, image)
    ratio2 = config.psf_radius_ratio**2
    scales = np.array([1.0, ratio2])
    fluxes = np.array([1.0, config.psf_peak_ratio * ratio2])
    eta_max = -math.log(config.psf_min_axis_ratio)
    lower = [-eta_max, -eta_max, math.log(config.psf_min_radius)]
    upper = [eta_max, eta_max, MAX_LOG_RADIUS]
    p0 = [0.0, 0.0, math.log(config.psf_initial_radius)]
    outcome = _fit_ellipse(dx, dy, data, 1.0, scales, np.zeros((2, 3)), fluxes, p0, lower, upper, config.psf_tau,
                           config.psf_gradient_tolerance, config.max_iterations)
    inner = _matrix(_ellipse_from_parameters(outcome.parameters))
    covariances = np.stack([inner, ratio2 * inner])
    if not config.use_shapelet_terms:
        coefficients = np.zeros((2, DERIVATIVE_TERMS))
        coefficients[:, 0] = outcome.amplitude * fluxes
    else:
        normal, rhs = model_flux_kernels.derivative_basis_normal_equations(dx, dy, data, covariances)
        coefficients = np.linalg.solve(normal, rhs).reshape(2, DERIVATIVE_TERMS)
    # order-0 Gauss-Hermite coefficient of each expansion, as a flux: 2 * integral(f * exp(-r'C^-1 r / 2))
    inverses = np.linalg.inv(covariances)
    second = coefficients[:, 3] * inverses[:, 0, 0] + coefficients[:, 4] * inverses[:, 0, 1] \
        + coefficients[:, 5] * inverses[:, 1, 1]
    gaussian_fluxes = coefficients[:, 0] - 0.5 * second
    return PsfModel(covariances, coefficients, gaussian_fluxes)


# ------------------------------------------------------------------------------------------ profile fits


@dataclass
class _FitPixels:
    """Weighted data and offsets of the fit pixels."""

    dx: np.ndarray
    dy: np.ndarray
    data: np.ndarray  # already multiplied by `weight`
    weight: float


def _ellipse_box(q: np.ndarray, x: float, y: float, scale: float) -> tuple[list[int], list[float]]:
    """Pixel-centre box (x_lo, x_hi, y_lo, y_hi) of the ellipse q * scale^2 centred on (x, y), and its
    inverse (xx, xy, yy): a pixel centre (px, py) is inside when r'inverse r <= 1, r = (px - x, py - y)."""
    qs = q * scale * scale
    half_x, half_y = math.sqrt(qs[0, 0]), math.sqrt(qs[1, 1])
    if not (math.isfinite(half_x) and math.isfinite(half_y)) or half_x * half_y > 1e8:
        raise FitRegionError("ellipse too large")
    inverse = np.linalg.inv(qs)
    return ([math.ceil(x - half_x), math.floor(x + half_x), math.ceil(y - half_y), math.floor(y + half_y)],
            [float(inverse[0, 0]), float(inverse[0, 1]), float(inverse[1, 1])])


def _grown_footprint(footprint_ys: np.ndarray, footprint_xs: np.ndarray, grow: int) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs) of the footprint dilated by a disk of radius `grow` (pixels within Euclidean distance `grow`)."""
    return model_flux_kernels.grown_footprint(np.asarray(footprint_ys, dtype=np.int64),
                                              np.asarray(footprint_xs, dtype=np.int64), int(grow))


_REGION_ERRORS = {model_flux_kernels.REGION_LEAVES_IMAGE: "fit region leaves the image",
                  model_flux_kernels.REGION_TOO_MANY_BAD: "too many bad pixels",
                  model_flux_kernels.REGION_BAD_VARIANCE: "non-positive variance"}


def _fit_pixels(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, grown_ys: np.ndarray,
                grown_xs: np.ndarray, x: float, y: float, ellipses: list[np.ndarray],
                config: ModelFluxConfig) -> _FitPixels:
    """Grown footprint (`_grown_footprint`) U the ellipses x radius_input_factor, minus bad pixels (row-major);
    the data weighted by 1 / sqrt(mean variance of those pixels). FitRegionError when the region leaves the
    image, has more than max_bad_pixel_fraction bad pixels, or no positive variance."""
    boxes, inverses = zip(*(_ellipse_box(q, x, y, config.radius_input_factor) for q in ellipses), strict=True)
    status, dx, dy, data, weight = model_flux_kernels.fit_region(
        image, variance, mask, np.asarray(grown_ys, dtype=np.int64), np.asarray(grown_xs, dtype=np.int64),
        float(x), float(y), np.array(boxes, dtype=np.int64), np.array(inverses), int(config.bad_pixel_bits),
        float(config.max_bad_pixel_fraction))
    if status != model_flux_kernels.REGION_OK:
        raise FitRegionError(_REGION_ERRORS[status])
    return _FitPixels(dx, dy, data, weight)


def _psf_rows(psf_model: PsfModel) -> np.ndarray:
    """(K, 3) rows (Pxx, Pxy, Pyy) of the PSF component covariances."""
    return psf_model.covariances.reshape(-1, 4)[:, [0, 1, 3]]


def _model_vector(profile: Profile, q: Ellipse, psf_model: PsfModel, dx: np.ndarray, dy: np.ndarray,
                  full_psf: bool) -> np.ndarray:
    """PSF-convolved unit-flux profile of ellipse q at the offsets (full shapelet PSF or Gaussian part).

    Every Gaussian-derivative basis function is N_k times a quadratic polynomial of the offsets, so the model
    is sum_k N_k (c_k . monomials) with per-Gaussian polynomial coefficients c_k (compiled:
    `model_flux_kernels.profile_model`)."""
    return model_flux_kernels.profile_model(
        np.ascontiguousarray(dx, dtype=np.float64), np.ascontiguousarray(dy, dtype=np.float64), profile.variances,
        profile.fluxes, float(q[0]), float(q[1]), float(q[2]), np.ascontiguousarray(_psf_rows(psf_model)),
        psf_model.coefficients, psf_model.gaussian_fluxes, bool(full_psf))


def _fit_profile(profile: Profile, psf_model: PsfModel, pixels: _FitPixels, q0: np.ndarray,
                 config: ModelFluxConfig) -> ProfileFit:
    """Nonlinear ellipse fit (Gaussian PSF part) then the linear amplitude with the full PSF model."""
    n_psf = psf_model.covariances.shape[0]
    eta_max = -math.log(config.min_axis_ratio)
    lower = [-eta_max, -eta_max, math.log(config.min_radius)]
    upper = [eta_max, eta_max, MAX_LOG_RADIUS]
    try:
        outcome = _fit_ellipse(pixels.dx, pixels.dy, pixels.data, pixels.weight, np.tile(profile.variances, n_psf),
                               np.repeat(_psf_rows(psf_model), profile.variances.size, axis=0),
                               np.outer(psf_model.gaussian_fluxes, profile.fluxes).ravel(),
                               _parameters_from_ellipse(q0), lower, upper, config.tau, config.gradient_tolerance,
                               config.max_iterations)
    except FloatingPointError:
        return ProfileFit(n_pixels=pixels.data.size)
    q = _ellipse_from_parameters(outcome.parameters)
    model = _model_vector(profile, q, psf_model, pixels.dx, pixels.dy, config.use_shapelet_terms) * pixels.weight
    norm2 = float(model @ model)
    if not norm2 > 0:
        return ProfileFit(n_pixels=pixels.data.size)
    flux = float(model @ pixels.data) / norm2
    large_area = _area(_matrix(q)) >= pixels.data.size
    return ProfileFit(flux, 1.0 / math.sqrt(norm2), bool(large_area or outcome.max_iter or not math.isfinite(flux)),
                      q, int(pixels.data.size), outcome.max_iter)


def initial_ellipse(profile: Profile, psf_model: PsfModel, ixx: float, ixy: float, iyy: float, shape_ok: bool,
                    config: ModelFluxConfig) -> np.ndarray:
    """shape.sdss deconvolved by the PSF model (2013 MultiGaussian::deconvolve), or 0.5 x PSF ellipse."""
    psf_inner = psf_model.inner
    fallback = psf_inner * config.min_initial_radius**2
    moments = np.array([[ixx, ixy], [ixy, iyy]]) if shape_ok else psf_inner
    if not np.all(np.isfinite(moments)):
        return fallback
    psf_fluxes = psf_model.gaussian_fluxes
    psf_scales = psf_model.covariances[:, 0, 0] / psf_inner[0, 0]
    total = float(psf_fluxes.sum())
    q = (moments * total - psf_inner * float(psf_fluxes @ psf_scales)) / (total * profile.mean_variance)
    eps = np.finfo(np.float64).eps
    if q[0, 0] < eps or q[1, 1] < eps or q[0, 0] * q[1, 1] - q[0, 1] ** 2 < eps:
        return fallback
    if (_trace_radius(q) < _trace_radius(psf_inner) * config.min_initial_radius
            or _axis_ratio(q) < config.min_axis_ratio):
        return fallback
    return q


def _fit_one(profile: Profile, image: np.ndarray, variance: np.ndarray, mask: np.ndarray, grown_ys: np.ndarray,
             grown_xs: np.ndarray, x: float, y: float, q0: np.ndarray, psf_model: PsfModel,
             config: ModelFluxConfig) -> ProfileFit:
    try:
        pixels = _fit_pixels(image, variance, mask, grown_ys, grown_xs, x, y, [q0], config)
    except FitRegionError:
        return ProfileFit()
    return _fit_profile(profile, psf_model, pixels, q0, config)


def _combo(models: np.ndarray, data: np.ndarray, singles: tuple[ProfileFit, ProfileFit]) -> tuple[float, float]:
    """multishapelet.combo (flux, err) from the weighted exp and dev model vectors (2, N) and the data.

    When the two models are indistinguishable (1 - |cos| < DEGENERATE_COMBO: both fits shrank to the
    PSF), the joint fit is singular; the 2013 solver then returned huge amplitudes of opposite sign and the
    sign rule kept one single-profile result, so the de Vaucouleurs result is taken directly.
    """
    norms = np.linalg.norm(models, axis=1)
    if 1.0 - abs(float(models[0] @ models[1])) / float(norms[0] * norms[1]) < DEGENERATE_COMBO:
        return singles[1].flux, singles[1].flux_err
    try:
        amplitudes, covariance = _combo_amplitudes(models, data)
    except np.linalg.LinAlgError:
        return math.nan, math.nan
    return _combo_from_amplitudes(amplitudes, covariance, singles)


def _combo_amplitudes(models: np.ndarray, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Joint linear least squares of data on the rows of `models` (2, N): solution and covariance."""
    normal = models @ models.T
    covariance = np.linalg.inv(normal)
    return covariance @ (models @ data), covariance


def _combo_from_amplitudes(amplitudes: np.ndarray, covariance: np.ndarray,
                           singles: tuple[ProfileFit, ProfileFit]) -> tuple[float, float]:
    """2013 sign rules: both >= 0 -> sum; one negative -> the other single-profile result; both -> NaN."""
    a_exp, a_dev = amplitudes
    if a_exp < 0 and a_dev < 0:
        return math.nan, math.nan
    if a_exp < 0:
        return singles[1].flux, singles[1].flux_err
    if a_dev < 0:
        return singles[0].flux, singles[0].flux_err
    flux = float(a_exp + a_dev)
    fractions = amplitudes / flux
    err_squared = float(covariance[0, 0] * fractions[0] + covariance[1, 1] * fractions[1])
    return flux, math.sqrt(err_squared) if err_squared >= 0 else math.nan


def model_fluxes(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, footprint_ys: np.ndarray,
                 footprint_xs: np.ndarray, x: float, y: float, ixx: float, ixy: float, iyy: float, shape_ok: bool,
                 psf: Psf, config: ModelFluxConfig | None = None, psf_model: PsfModel | None = None
                 ) -> ModelFluxResult:
    """multishapelet.exp / .dev / .combo raw fluxes of one source centred at (x, y).

    `footprint_ys/xs` are the ungrown footprint pixels (full-frame), (ixx, ixy, iyy) the shape.sdss moments
    and `shape_ok` False when shape.sdss is flagged. Scale the fluxes by p_psf / p (`model_flux_psf_factors`)
    before aperture correction.
    """
    config = config or ModelFluxConfig()
    psf_model = psf_model or fit_psf_model(psf, x, y, config)
    grown_ys, grown_xs = _grown_footprint(np.asarray(footprint_ys), np.asarray(footprint_xs), config.grow_footprint)
    fits = []
    for profile in (EXPONENTIAL, DE_VAUCOULEURS):
        q0 = initial_ellipse(profile, psf_model, ixx, ixy, iyy, shape_ok, config)
        fits.append(_fit_one(profile, image, variance, mask, grown_ys, grown_xs, x, y, q0, psf_model, config))
    exp_fit, dev_fit = fits
    result = ModelFluxResult(exp_fit, dev_fit)
    if exp_fit.flag or dev_fit.flag or not (math.isfinite(exp_fit.flux) and math.isfinite(dev_fit.flux)):
        return result
    try:
        pixels = _fit_pixels(image, variance, mask, grown_ys, grown_xs, x, y,
                             [_matrix(exp_fit.ellipse), _matrix(dev_fit.ellipse)], config)
    except FitRegionError:
        return result
    models = np.stack([_model_vector(fit_result_profile, fit_result.ellipse, psf_model, pixels.dx, pixels.dy,
                                     config.use_shapelet_terms)
                       for fit_result_profile, fit_result in ((EXPONENTIAL, exp_fit), (DE_VAUCOULEURS, dev_fit))])
    models *= pixels.weight
    flux, err = _combo(models, pixels.data, (exp_fit, dev_fit))
    return ModelFluxResult(exp_fit, dev_fit, flux, err, not math.isfinite(flux))


def model_flux_psf_factors(psf: Psf, x: float, y: float, config: ModelFluxConfig | None = None,
                           psf_model: PsfModel | None = None) -> ModelFluxPsfFactors:
    """PSF factors of exp / dev / combo: the same fits on the peak-normalised PSF image at (x, y)
    (31 x 31 pixels, unit weights, initial ellipse 0.5 x the PSF ellipse)."""
    config = config or ModelFluxConfig()
    psf_model = psf_model or fit_psf_model(psf, x, y, config)
    image = psf.compute_image(x, y)
    _, dx, dy = _psf_offsets(psf, x, y)
    pixels = _FitPixels(dx, dy, image.ravel().astype(np.float64), 1.0)
    q0 = psf_model.inner * config.min_initial_radius**2
    fits = [_fit_profile(profile, psf_model, pixels, q0, config) for profile in (EXPONENTIAL, DE_VAUCOULEURS)]
    combo = math.nan
    if all(math.isfinite(fit.flux) for fit in fits):
        models = np.stack([_model_vector(profile, fit.ellipse, psf_model, dx, dy, config.use_shapelet_terms)
                           for profile, fit in zip((EXPONENTIAL, DE_VAUCOULEURS), fits, strict=True)])
        combo = _combo(models, pixels.data, (fits[0], fits[1]))[0]
    return ModelFluxPsfFactors(fits[0].flux, fits[1].flux, combo)


class PsfModelCache:
    """multishapelet.psf models and PSF-factor ratios p_X / p_psf evaluated once per cell of a grid.

    The PSF varies slowly over the frame, and p_X / p_psf (p_psf = sum of the peak-normalised PSF image,
    the flux.psf factor) hardly depends on the sub-pixel phase (< 2e-4 for the SDSS r PSF), so one fit at
    the integer pixel nearest each cell centre serves every source in the cell; `factors` rescales the
    ratios by the exact p_psf at the source.
    """

    def __init__(self, psf: Psf, config: ModelFluxConfig | None = None) -> None:
        self.psf = psf
        self.config = config or ModelFluxConfig()
        self.cell_size = self.config.psf_factor_cell_size
        self._entries: dict[tuple[int, int], tuple[PsfModel, np.ndarray]] = {}

    def _entry(self, x: float, y: float) -> tuple[PsfModel, np.ndarray]:
        key = (math.floor(x / self.cell_size), math.floor(y / self.cell_size))
        entry = self._entries.get(key)
        if entry is None:
            cx = math.floor((key[0] + 0.5) * self.cell_size)
            cy = math.floor((key[1] + 0.5) * self.cell_size)
            psf_model = fit_psf_model(self.psf, cx, cy, self.config)
            factors = model_flux_psf_factors(self.psf, cx, cy, self.config, psf_model)
            p_psf = float(self.psf.compute_image(cx, cy).sum())
            entry = (psf_model, np.array([factors.exp, factors.dev, factors.combo]) / p_psf)
            self._entries[key] = entry
        return entry

    def psf_model(self, x: float, y: float) -> PsfModel:
        """The multishapelet.psf model of the cell holding (x, y)."""
        return self._entry(x, y)[0]

    def factors(self, x: float, y: float, p_psf: float | None = None) -> ModelFluxPsfFactors:
        """PSF factors at (x, y): the cell's p_X / p_psf times p_psf at (x, y) (computed if not given)."""
        if p_psf is None:
            p_psf = float(self.psf.compute_image(x, y).sum())
        ratios = self._entry(x, y)[1] * p_psf
        return ModelFluxPsfFactors(float(ratios[0]), float(ratios[1]), float(ratios[2]))
