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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

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

BAD_PIXEL_BITS = 1 | 2 | 4 | 8  # BAD | SAT | INTRP | CR
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


def _ellipse_from_parameters(p: np.ndarray) -> np.ndarray:
    """Quadrupole (2x2) from (eta1, eta2, ln r): r^2 times the unit-determinant matrix exp(eta . sigma)
    (conformal shear eta, axis ratio exp(-|eta|); r the determinant radius)."""
    eta1, eta2, log_r = p
    eta = math.hypot(eta1, eta2)
    r2 = math.exp(2.0 * log_r)
    if eta < 1e-12:
        return np.array([[r2, 0.0], [0.0, r2]])
    c, s = math.cosh(eta), math.sinh(eta) / eta
    return r2 * np.array([[c + s * eta1, s * eta2], [s * eta2, c - s * eta1]])


def _parameters_from_ellipse(q: np.ndarray) -> np.ndarray:
    """Inverse of `_ellipse_from_parameters`."""
    r2 = math.sqrt(q[0, 0] * q[1, 1] - q[0, 1] ** 2)
    m = q / r2
    eta = math.acosh(max(0.5 * (m[0, 0] + m[1, 1]), 1.0))
    if eta < 1e-12:
        return np.array([0.0, 0.0, 0.5 * math.log(r2)])
    s = math.sinh(eta) / eta
    return np.array([0.5 * (m[0, 0] - m[1, 1]) / s, m[0, 1] / s, 0.5 * math.log(r2)])


def _ellipse_jacobian(p: np.ndarray) -> np.ndarray:
    """d(Qxx, Qxy, Qyy)/d(eta1, eta2, ln r), (3, 3)."""
    eta1, eta2, log_r = p
    eta = math.hypot(eta1, eta2)
    r2 = math.exp(2.0 * log_r)
    if eta < 1e-4:  # series of cosh, sinh(eta)/eta and the derivative factor (c - s) / eta^2
        c, s, ds = 1.0 + 0.5 * eta * eta, 1.0 + eta * eta / 6.0, 1.0 / 3.0 + eta * eta / 30.0
    else:
        c, s = math.cosh(eta), math.sinh(eta) / eta
        ds = (c - s) / (eta * eta)
    ds1, ds2 = ds * eta1, ds * eta2  # d s / d eta_i
    return r2 * np.array([
        [s * eta1 + ds1 * eta1 + s, s * eta2 + ds2 * eta1, 2.0 * (c + s * eta1)],
        [ds1 * eta2, ds2 * eta2 + s, 2.0 * s * eta2],
        [s * eta1 - ds1 * eta1 - s, s * eta2 - ds2 * eta1, 2.0 * (c - s * eta1)],
    ])


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


# ---------------------------------------------------------------------------------------- Gaussian sums


class _GaussianSet:
    """Unit-flux Gaussians of covariances C_k evaluated at offsets (dx, dy), with the pieces needed for
    derivatives with respect to position (u = C^-1 r) and to the covariance."""

    def __init__(self, covariances: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> None:
        cxx, cxy, cyy = covariances[:, 0, 0], covariances[:, 0, 1], covariances[:, 1, 1]
        det = cxx * cyy - cxy * cxy
        self.ixx, self.ixy, self.iyy = (cyy / det)[:, None], (-cxy / det)[:, None], (cxx / det)[:, None]
        self.ux = self.ixx * dx + self.ixy * dy
        self.uy = self.ixy * dx + self.iyy * dy
        self.values = np.exp(-0.5 * (self.ux * dx + self.uy * dy)) / (2.0 * math.pi * np.sqrt(det))[:, None]

    def derivative_basis(self) -> np.ndarray:
        """(K, 6, N): G, dG/dx, dG/dy, d2G/dx2, d2G/dxdy, d2G/dy2."""
        g, ux, uy = self.values, self.ux, self.uy
        return np.stack([g, -ux * g, -uy * g, (ux * ux - self.ixx) * g, (ux * uy - self.ixy) * g,
                         (uy * uy - self.iyy) * g], axis=1)


def _quadratic_terms(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """(4, N): dx^2, 2 dx dy, dy^2, 1 (the pixel-side factors of every Gaussian quadratic form)."""
    return np.stack([dx * dx, 2.0 * dx * dy, dy * dy, np.ones_like(dx)])


def _mixture_and_derivatives(covariances: np.ndarray, fluxes: np.ndarray, scales: np.ndarray,
                             quadratic: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum_k f_k N_{C_k} at the pixels and its derivatives with respect to the ellipse (Qxx, Qxy, Qyy) when
    C_k = s_k Q + P_k: (N,), (N, 3). All per-Gaussian work is two matrix products and one exp."""
    cxx, cxy, cyy = covariances[:, 0, 0], covariances[:, 0, 1], covariances[:, 1, 1]
    det = cxx * cyy - cxy * cxy
    ixx, ixy, iyy = cyy / det, -cxy / det, cxx / det
    exponent = np.stack([ixx, ixy, iyy], axis=1) @ quadratic[:3]
    gaussians = np.exp(-0.5 * exponent)
    norm = fluxes / (2.0 * math.pi * np.sqrt(det))
    ws = norm * scales
    # rows: model; (ux^2 terms, -ixx) for Cxx; (ux uy terms, -ixy) for Cxy; (uy^2 terms, -iyy) for Cyy
    coefficients = np.stack([
        norm,
        ws * ixx * ixx, ws * ixx * ixy, ws * ixy * ixy, -ws * ixx,
        ws * ixx * ixy, ws * 0.5 * (ixx * iyy + ixy * ixy), ws * ixy * iyy, -ws * ixy,
        ws * ixy * ixy, ws * ixy * iyy, ws * iyy * iyy, -ws * iyy,
    ])
    sums = coefficients @ gaussians  # (13, N)
    model = sums[0]
    d_xx = 0.5 * np.einsum("jn,jn->n", sums[1:5], quadratic)
    d_xy = np.einsum("jn,jn->n", sums[5:9], quadratic)
    d_yy = 0.5 * np.einsum("jn,jn->n", sums[9:13], quadratic)
    return model, np.stack([d_xx, d_xy, d_yy], axis=1)


# --------------------------------------------------------------------------------------------- optimiser


@dataclass
class _FitOutcome:
    parameters: np.ndarray
    amplitude: float
    max_iter: bool


def _variable_projection(model_and_jacobian, data: np.ndarray, p: np.ndarray) -> tuple:
    """Residuals f = A m - d with the best linear amplitude A, and the full Jacobian of f."""
    model, dmodel = model_and_jacobian(p)  # (N,), (N, 3)
    norm2 = float(model @ model)
    if not norm2 > 0:
        raise FloatingPointError("empty model")
    amplitude = float(model @ data) / norm2
    residual = amplitude * model - data
    damplitude = (dmodel.T @ (data - 2.0 * amplitude * model)) / norm2
    jacobian = amplitude * dmodel + np.outer(model, damplitude)
    return residual, jacobian, amplitude


def _levenberg_marquardt(model_and_jacobian, data: np.ndarray, p0: np.ndarray, lower: np.ndarray,
                         upper: np.ndarray, tau: float, gtol: float, max_iterations: int) -> _FitOutcome:
    """Levenberg-Marquardt (Nielsen damping) on the variable-projection residuals, box-clipped."""
    p = np.clip(p0, lower, upper)
    f, jac, amplitude = _variable_projection(model_and_jacobian, data, p)
    cost = 0.5 * float(f @ f)
    hessian, gradient = jac.T @ jac, jac.T @ f
    mu = tau * float(np.max(np.diag(hessian)))
    nu = 2.0
    for _ in range(max_iterations):
        if float(np.max(np.abs(gradient))) <= gtol:
            return _FitOutcome(p, amplitude, False)
        try:
            step = np.linalg.solve(hessian + mu * np.eye(3), -gradient)
        except np.linalg.LinAlgError:
            return _FitOutcome(p, amplitude, False)
        p_new = np.clip(p + step, lower, upper)
        step = p_new - p
        if float(np.linalg.norm(step)) <= 1e-8 * (float(np.linalg.norm(p)) + 1e-8):
            return _FitOutcome(p, amplitude, False)
        try:
            f_new, jac_new, amplitude_new = _variable_projection(model_and_jacobian, data, p_new)
        except FloatingPointError:
            mu *= nu
            nu *= 2.0
            continue
        cost_new = 0.5 * float(f_new @ f_new)
        predicted = 0.5 * float(step @ (mu * step - gradient))
        rho = (cost - cost_new) / predicted if predicted > 0 else -1.0
        if rho > 0:
            p, f, jac, amplitude, cost = p_new, f_new, jac_new, amplitude_new, cost_new
            hessian, gradient = jac.T @ jac, jac.T @ f
            mu *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            nu = 2.0
        else:
            mu *= nu
            nu *= 2.0
    return _FitOutcome(p, amplitude, True)


# ------------------------------------------------------------------------------------------- PSF model


def _psf_offsets(psf: Psf, x: float, y: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit-sum PSF image at (x, y) flattened, with pixel offsets from (x, y)."""
    image = psf.unit_sum_image(x, y)
    half = image.shape[0] // 2
    grid = np.arange(image.shape[0], dtype=np.float64) - half
    dy, dx = np.meshgrid(grid - (y - math.floor(y + 0.5)), grid - (x - math.floor(x + 0.5)), indexing="ij")
    return image.ravel(), dx.ravel(), dy.ravel()


def fit_psf_model(psf: Psf, x: float, y: float, config: ModelFluxConfig | None = None) -> PsfModel:
    """multishapelet.psf at (x, y): double Gaussian ellipse fit, then the order-2 expansions (linear)."""
    config = config or ModelFluxConfig()
    data, dx, dy = _psf_offsets(psf, x, y)
    ratio2 = config.psf_radius_ratio**2
    scales = np.array([1.0, ratio2])
    fluxes = np.array([1.0, config.psf_peak_ratio * ratio2])

    quadratic = _quadratic_terms(dx, dy)

    def model_and_jacobian(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        model, dq = _mixture_and_derivatives(scales[:, None, None] * _ellipse_from_parameters(p), fluxes, scales,
                                             quadratic)
        return model, dq @ _ellipse_jacobian(p)

    eta_max = -math.log(config.psf_min_axis_ratio)
    lower = np.array([-eta_max, -eta_max, math.log(config.psf_min_radius)])
    upper = np.array([eta_max, eta_max, MAX_LOG_RADIUS])
    p0 = np.array([0.0, 0.0, math.log(config.psf_initial_radius)])
    outcome = _levenberg_marquardt(model_and_jacobian, data, p0, lower, upper, config.psf_tau,
                                   config.psf_gradient_tolerance, config.max_iterations)
    inner = _ellipse_from_parameters(outcome.parameters)
    covariances = np.stack([inner, ratio2 * inner])
    gaussians = _GaussianSet(covariances, dx, dy)
    basis = gaussians.derivative_basis()  # (2, 6, N)
    if not config.use_shapelet_terms:
        coefficients = np.zeros((2, DERIVATIVE_TERMS))
        coefficients[:, 0] = outcome.amplitude * fluxes
    else:
        design = basis.reshape(2 * DERIVATIVE_TERMS, -1)
        coefficients = np.linalg.solve(design @ design.T, design @ data).reshape(2, DERIVATIVE_TERMS)
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


def _ellipse_pixels(q: np.ndarray, x: float, y: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs) of the pixel centres inside the ellipse q * scale^2 centred on (x, y)."""
    qs = q * scale * scale
    half_x, half_y = math.sqrt(qs[0, 0]), math.sqrt(qs[1, 1])
    if not (math.isfinite(half_x) and math.isfinite(half_y)) or half_x * half_y > 1e8:
        raise FitRegionError("ellipse too large")
    xs = np.arange(math.ceil(x - half_x), math.floor(x + half_x) + 1)
    ys = np.arange(math.ceil(y - half_y), math.floor(y + half_y) + 1)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    inv = np.linalg.inv(qs)
    ddx, ddy = gx - x, gy - y
    inside = inv[0, 0] * ddx * ddx + 2.0 * inv[0, 1] * ddx * ddy + inv[1, 1] * ddy * ddy <= 1.0
    return gy[inside], gx[inside]


def _disk(radius: int) -> np.ndarray:
    grid = np.arange(-radius, radius + 1)
    return grid[:, None] ** 2 + grid[None, :] ** 2 <= radius * radius


def _fit_pixels(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, footprint_ys: np.ndarray,
                footprint_xs: np.ndarray, x: float, y: float, ellipses: list[np.ndarray],
                config: ModelFluxConfig) -> _FitPixels:
    """Footprint grown by `grow_footprint` U the ellipses x radius_input_factor, minus bad pixels."""
    grow = config.grow_footprint
    region_parts = [_ellipse_pixels(q, x, y, config.radius_input_factor) for q in ellipses]
    all_ys = np.concatenate([footprint_ys] + [part[0] for part in region_parts])
    all_xs = np.concatenate([footprint_xs] + [part[1] for part in region_parts])
    y0, x0 = int(all_ys.min()) - grow, int(all_xs.min()) - grow
    shape = (int(all_ys.max()) + grow - y0 + 1, int(all_xs.max()) + grow - x0 + 1)
    region = np.zeros(shape, dtype=bool)
    region[footprint_ys - y0, footprint_xs - x0] = True
    if grow > 0:
        region = ndimage.binary_dilation(region, structure=_disk(grow))
    for ys, xs in region_parts:
        region[ys - y0, xs - x0] = True
    ys, xs = np.nonzero(region)
    ys, xs = ys + y0, xs + x0
    height, width = image.shape
    if ys.min() < 0 or xs.min() < 0 or ys.max() >= height or xs.max() >= width:
        raise FitRegionError("fit region leaves the image")
    good = (mask[ys, xs] & config.bad_pixel_bits) == 0
    if np.count_nonzero(~good) > config.max_bad_pixel_fraction * ys.size:
        raise FitRegionError("too many bad pixels")
    ys, xs = ys[good], xs[good]
    mean_variance = float(np.mean(variance[ys, xs], dtype=np.float64))
    if not mean_variance > 0:
        raise FitRegionError("non-positive variance")
    weight = 1.0 / math.sqrt(mean_variance)
    data = np.asarray(image[ys, xs], dtype=np.float64) * weight
    return _FitPixels(xs - x, ys - y, data, weight)


def _convolved_covariances(profile: Profile, q: np.ndarray, psf_model: PsfModel) -> np.ndarray:
    """(G*K, 2, 2): v_g Q + P_k, PSF component major."""
    return (profile.variances[None, :, None, None] * q[None, None]
            + psf_model.covariances[:, None]).reshape(-1, 2, 2)


def _model_vector(profile: Profile, q: np.ndarray, psf_model: PsfModel, dx: np.ndarray, dy: np.ndarray,
                  full_psf: bool) -> np.ndarray:
    """PSF-convolved unit-flux profile of ellipse q at the offsets (full shapelet PSF or Gaussian part)."""
    gaussians = _GaussianSet(_convolved_covariances(profile, q, psf_model), dx, dy)
    if not full_psf:
        weights = np.outer(psf_model.gaussian_fluxes, profile.fluxes).ravel()
        return weights @ gaussians.values
    weights = (psf_model.coefficients[:, None, :] * profile.fluxes[None, :, None]).reshape(-1, DERIVATIVE_TERMS)
    basis = gaussians.derivative_basis()  # (G*K, 6, N)
    return np.einsum("kj,kjn->n", weights, basis)


def _fit_profile(profile: Profile, psf_model: PsfModel, pixels: _FitPixels, q0: np.ndarray,
                 config: ModelFluxConfig) -> ProfileFit:
    """Nonlinear ellipse fit (Gaussian PSF part) then the linear amplitude with the full PSF model."""
    flux_weights = np.outer(psf_model.gaussian_fluxes, profile.fluxes).ravel()
    variance_weights = np.tile(profile.variances, psf_model.covariances.shape[0])
    dx, dy = pixels.dx, pixels.dy

    quadratic = _quadratic_terms(dx, dy)

    def model_and_jacobian(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        covariances = _convolved_covariances(profile, _ellipse_from_parameters(p), psf_model)
        model, dq = _mixture_and_derivatives(covariances, flux_weights, variance_weights, quadratic)
        return model * pixels.weight, (dq @ _ellipse_jacobian(p)) * pixels.weight

    eta_max = -math.log(config.min_axis_ratio)
    lower = np.array([-eta_max, -eta_max, math.log(config.min_radius)])
    upper = np.array([eta_max, eta_max, MAX_LOG_RADIUS])
    try:
        outcome = _levenberg_marquardt(model_and_jacobian, pixels.data, _parameters_from_ellipse(q0), lower,
                                       upper, config.tau, config.gradient_tolerance, config.max_iterations)
    except FloatingPointError:
        return ProfileFit(n_pixels=pixels.data.size)
    q = _ellipse_from_parameters(outcome.parameters)
    model = _model_vector(profile, q, psf_model, dx, dy, config.use_shapelet_terms) * pixels.weight
    norm2 = float(model @ model)
    if not norm2 > 0:
        return ProfileFit(n_pixels=pixels.data.size)
    flux = float(model @ pixels.data) / norm2
    large_area = _area(q) >= pixels.data.size
    return ProfileFit(flux, 1.0 / math.sqrt(norm2), bool(large_area or outcome.max_iter or not math.isfinite(flux)),
                      (float(q[0, 0]), float(q[0, 1]), float(q[1, 1])), int(pixels.data.size), outcome.max_iter)


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


def _fit_one(profile: Profile, image: np.ndarray, variance: np.ndarray, mask: np.ndarray, footprint_ys: np.ndarray,
             footprint_xs: np.ndarray, x: float, y: float, q0: np.ndarray, psf_model: PsfModel,
             config: ModelFluxConfig) -> ProfileFit:
    try:
        pixels = _fit_pixels(image, variance, mask, footprint_ys, footprint_xs, x, y, [q0], config)
    except FitRegionError:
        return ProfileFit()
    return _fit_profile(profile, psf_model, pixels, q0, config)


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
    fits = []
    for profile in (EXPONENTIAL, DE_VAUCOULEURS):
        q0 = initial_ellipse(profile, psf_model, ixx, ixy, iyy, shape_ok, config)
        fits.append(_fit_one(profile, image, variance, mask, footprint_ys, footprint_xs, x, y, q0, psf_model,
                             config))
    exp_fit, dev_fit = fits
    result = ModelFluxResult(exp_fit, dev_fit)
    if exp_fit.flag or dev_fit.flag or not (math.isfinite(exp_fit.flux) and math.isfinite(dev_fit.flux)):
        return result
    ellipses = [np.array([[e[0], e[1]], [e[1], e[2]]]) for e in (exp_fit.ellipse, dev_fit.ellipse)]
    try:
        pixels = _fit_pixels(image, variance, mask, footprint_ys, footprint_xs, x, y, ellipses, config)
    except FitRegionError:
        return result
    models = np.stack([_model_vector(profile, q, psf_model, pixels.dx, pixels.dy, config.use_shapelet_terms)
                       for profile, q in zip((EXPONENTIAL, DE_VAUCOULEURS), ellipses, strict=True)]) * pixels.weight
    try:
        amplitudes, covariance = _combo_amplitudes(models, pixels.data)
    except np.linalg.LinAlgError:
        return result
    flux, err = _combo_from_amplitudes(amplitudes, covariance, (exp_fit, dev_fit))
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
        ellipses = [np.array([[e[0], e[1]], [e[1], e[2]]]) for e in (fit.ellipse for fit in fits)]
        models = np.stack([_model_vector(profile, q, psf_model, dx, dy, config.use_shapelet_terms)
                           for profile, q in zip((EXPONENTIAL, DE_VAUCOULEURS), ellipses, strict=True)])
        try:
            amplitudes, covariance = _combo_amplitudes(models, pixels.data)
            combo = _combo_from_amplitudes(amplitudes, covariance, (fits[0], fits[1]))[0]
        except np.linalg.LinAlgError:
            combo = math.nan
    return ModelFluxPsfFactors(fits[0].flux, fits[1].flux, combo)


class PsfModelCache:
    """multishapelet.psf models and PSF-factor ratios p_X / p_psf evaluated once per cell of a grid.

    The PSF varies slowly over the frame, and p_X / p_psf (p_psf = sum of the peak-normalised PSF image,
    the flux.psf factor) hardly depends on the sub-pixel phase (< 2e-4 for the SDSS r PSF), so one fit at
    the integer pixel nearest each cell centre serves every source in the cell; `factors` rescales the
    ratios by the exact p_psf at the source.
    """

    def __init__(self, psf: Psf, config: ModelFluxConfig | None = None, cell_size: int = 64) -> None:
        self.psf = psf
        self.config = config or ModelFluxConfig()
        self.cell_size = cell_size
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
