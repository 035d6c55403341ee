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

Implementation: each LM evaluation computes the Gaussians once, the model and its ellipse derivatives with
one matrix product (the ellipse Jacobian folded into per-Gaussian coefficients), and reduces the pixels to
the 5 x 5 Gram matrix of (model, derivatives, data), from which the variable-projection Hessian and gradient
follow exactly; the LM itself runs on Python floats. Pixels are processed in blocks of PIXEL_BLOCK so the
BLAS calls stay single-threaded.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from processccd.image import mask_bit
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


def _inverse_covariances(covariances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(K, 3) rows (Cxx, Cxy, Cyy) -> (K, 3) rows of C^-1 (same layout) and the determinants (K,)."""
    det = covariances[:, 0] * covariances[:, 2] - covariances[:, 1] * covariances[:, 1]
    inverses = covariances[:, ::-1] * np.array([1.0, -1.0, 1.0]) / det[:, None]
    return inverses, det


ELLIPSE_CHUNK = 1 << 16  # pixels per chunk when the ellipse region is scanned
PIXEL_BLOCK = 1024  # pixels per block: keeps the BLAS calls single-threaded (and the arrays in cache)
DEGENERATE_COMBO = 1e-8  # 1 - |cos| of the exp and dev model vectors below which they are one model


def _derivative_map() -> np.ndarray:
    """(4, 3, 16) map from the products (ixx, ixy, iyy, 1) x (ixx, ixy, iyy, 1) of a Gaussian's inverse
    covariance to the coefficients of the monomials (dx^2, 2 dx dy, dy^2, 1) in its derivatives with respect
    to (Qxx, Qxy, Qyy): [monomial, Q entry, product]. From dN/dC = N (u u' - C^-1) / 2 with u = C^-1 r
    (the off-diagonal Qxy counts twice)."""
    xx, xy, yy, one = 0, 1, 2, 3

    def product(i: int, j: int) -> int:
        return 4 * i + j

    terms = np.zeros((4, 3, 16))
    # Qxx: (ux^2 - ixx) / 2
    terms[0, 0, product(xx, xx)], terms[1, 0, product(xx, xy)] = 0.5, 0.5
    terms[2, 0, product(xy, xy)], terms[3, 0, product(xx, one)] = 0.5, -0.5
    # Qxy: ux uy - ixy
    terms[0, 1, product(xx, xy)], terms[1, 1, product(xx, yy)], terms[1, 1, product(xy, xy)] = 1.0, 0.5, 0.5
    terms[2, 1, product(xy, yy)], terms[3, 1, product(xy, one)] = 1.0, -1.0
    # Qyy: (uy^2 - iyy) / 2
    terms[0, 2, product(xy, xy)], terms[1, 2, product(xy, yy)] = 0.5, 0.5
    terms[2, 2, product(yy, yy)], terms[3, 2, product(yy, one)] = 0.5, -0.5
    return terms


_DERIVATIVE_MAP = _derivative_map()


class _PixelBlock:
    """One block of fit pixels: pixel-side factors and the rows computed at each evaluation."""

    def __init__(self, dx: np.ndarray, dy: np.ndarray, data: np.ndarray) -> None:
        dxdy = dx * dy
        self.half_quadratic = np.stack([-0.5 * (dx * dx), -dxdy, -0.5 * (dy * dy)])  # -(dx^2, 2 dx dy, dy^2) / 2
        self.monomials = np.stack([dx * dx, 2.0 * dxdy, dy * dy])[:, None, :]  # (3, 1, n)
        # rows 0-11: monomial-major coefficients of the 3 derivatives; 12: model; 13-15: d model / d p; 16: data
        self.rows = np.empty((17, dx.size))
        self.rows[16] = data
        self.fit_rows = self.rows[12:]

    def gram(self, inverses: np.ndarray, coefficients: np.ndarray) -> np.ndarray:
        """Gaussians, model and derivatives on this block; returns the Gram matrix of (model, D, data)."""
        rows = self.rows
        gaussians = inverses.T @ self.half_quadratic
        np.exp(gaussians, out=gaussians)
        np.matmul(coefficients, gaussians, out=rows[:13])
        terms = rows[:9].reshape(3, 3, -1) * self.monomials
        np.add.reduce(terms, axis=0, out=rows[13:16])
        rows[13:16] += rows[9:12]
        return self.fit_rows @ self.fit_rows.T

    def residual_squared(self, amplitude: float) -> float:
        residual = self.rows[12] * amplitude
        residual -= self.rows[16]
        return float(residual @ residual)


class _EllipseProblem:
    """Weighted data d fitted by A * sum_k f_k N(s_k Q + P_k) over the ellipse parameters p of Q
    (`_ellipse_from_parameters`), with the amplitude A solved linearly at every p (variable projection).

    Per evaluation the pixel-side work is two matrix products and one exp over (K, N) (the Gaussians, then
    the model and the monomial coefficients of its p-derivatives), one (9, N) multiply-add for the
    derivatives, the 5 x 5 Gram matrix of (model, derivatives, data) and the residual norm; everything else
    is (K,)-sized or scalar.
    """

    def __init__(self, dx: np.ndarray, dy: np.ndarray, data: np.ndarray, weight: float, scales: np.ndarray,
                 offsets: np.ndarray, fluxes: np.ndarray) -> None:
        self.blocks = [_PixelBlock(dx[start:start + PIXEL_BLOCK], dy[start:start + PIXEL_BLOCK],
                                   data[start:start + PIXEL_BLOCK]) for start in range(0, max(dx.size, 1), PIXEL_BLOCK)]
        self.scale_rows = np.tile(scales, (3, 1))  # (3, K)
        self.signed_offsets = offsets[:, ::-1].T * np.array([[1.0], [-1.0], [1.0]])  # (3, K): Pyy, -Pxy, Pxx
        self.norm_fluxes = fluxes / (2.0 * math.pi)
        self.weighted_scales = scales * weight
        self.weight = weight
        self.inverses = np.ones((4, scales.size))  # ixx, ixy, iyy, 1
        self.coefficients = np.empty((13, scales.size))

    def evaluate(self, p: Sequence[float]) -> tuple[float, list[list[float]], list[float], float]:
        """Cost 0.5 |A m - d|^2, Gauss-Newton Hessian J'J, gradient J'f and amplitude A at p
        (J the Jacobian of the residuals f = A m - d including dA/dp).

        Raises FloatingPointError when the model vanishes."""
        qxx, qxy, qyy = _ellipse_from_parameters(p)
        (j00, j01, j02), (j10, j11, j12), (j20, j21, j22) = _ellipse_jacobian(p)
        adjugate = self.scale_rows * np.array(((qyy,), (-qxy,), (qxx,)))  # (Cyy, -Cxy, Cxx) of every Gaussian
        adjugate += self.signed_offsets
        cyy, minus_cxy, cxx = adjugate
        det = cxx * cyy
        det -= minus_cxy * minus_cxy
        inverses = self.inverses
        np.divide(adjugate, det, out=inverses[:3])
        norm = self.norm_fluxes / np.sqrt(det)
        products = (inverses[:, None, :] * inverses[None, :, :]).reshape(16, -1)
        # d/dp_b = sum_a dQ_a/dp_b d/dQ_a: the ellipse Jacobian folded into the coefficient map
        chain = np.matmul(np.array(((j00, j10, j20), (j01, j11, j21), (j02, j12, j22))), _DERIVATIVE_MAP)
        coefficients = self.coefficients
        np.matmul(chain.reshape(12, 16), products, out=coefficients[:12])
        coefficients[:12] *= norm * self.weighted_scales
        np.multiply(norm, self.weight, out=coefficients[12])
        blocks = self.blocks
        gram_matrix = blocks[0].gram(inverses[:3], coefficients)
        for block in blocks[1:]:
            gram_matrix += block.gram(inverses[:3], coefficients)
        (mm, m1, m2, m3, md), (_, g11, g12, g13, d1), (_, _, g22, g23, d2), (_, _, _, g33, d3), _ = \
            gram_matrix.tolist()
        if not mm > 0:
            raise FloatingPointError("empty model")
        amplitude = md / mm
        residual_squared = blocks[0].residual_squared(amplitude)
        for block in blocks[1:]:
            residual_squared += block.residual_squared(amplitude)
        # J = A D + m dA' with dA = (D.d - 2 A D.m) / m.m (rows D = dm/dp); J'J and J'f from the Gram matrix
        a2 = amplitude * amplitude
        e1 = (d1 - 2.0 * amplitude * m1) / mm
        e2 = (d2 - 2.0 * amplitude * m2) / mm
        e3 = (d3 - 2.0 * amplitude * m3) / mm
        h11 = a2 * g11 + 2.0 * amplitude * m1 * e1 + mm * e1 * e1
        h22 = a2 * g22 + 2.0 * amplitude * m2 * e2 + mm * e2 * e2
        h33 = a2 * g33 + 2.0 * amplitude * m3 * e3 + mm * e3 * e3
        h12 = a2 * g12 + amplitude * (m1 * e2 + e1 * m2) + mm * e1 * e2
        h13 = a2 * g13 + amplitude * (m1 * e3 + e1 * m3) + mm * e1 * e3
        h23 = a2 * g23 + amplitude * (m2 * e3 + e2 * m3) + mm * e2 * e3
        residual_model = amplitude * mm - md  # m.f, zero up to rounding
        gradient = [amplitude * (amplitude * m1 - d1) + e1 * residual_model,
                    amplitude * (amplitude * m2 - d2) + e2 * residual_model,
                    amplitude * (amplitude * m3 - d3) + e3 * residual_model]
        return 0.5 * residual_squared, [[h11, h12, h13], [h12, h22, h23], [h13, h23, h33]], gradient, amplitude


# --------------------------------------------------------------------------------------------- optimiser


@dataclass
class _FitOutcome:
    parameters: list[float]
    amplitude: float
    max_iter: bool


def _solve_damped(hessian: list[list[float]], mu: float, gradient: list[float]) -> tuple[float, float, float]:
    """Solution s of (H + mu I) s = -g for the symmetric 3 x 3 H (LDL'); LinAlgError if a pivot is exactly 0."""
    (h00, h01, h02), (_, h11, h12), (_, _, h22) = hessian
    d0 = h00 + mu
    if d0 == 0.0:
        raise np.linalg.LinAlgError("Singular matrix")
    l10, l20 = h01 / d0, h02 / d0
    d1 = h11 + mu - l10 * h01
    if d1 == 0.0:
        raise np.linalg.LinAlgError("Singular matrix")
    c21 = h12 - l20 * h01
    l21 = c21 / d1
    d2 = h22 + mu - l20 * h02 - l21 * c21
    if d2 == 0.0:
        raise np.linalg.LinAlgError("Singular matrix")
    y0 = -gradient[0]
    y1 = -gradient[1] - l10 * y0
    y2 = -gradient[2] - l20 * y0 - l21 * y1
    s2 = y2 / d2
    s1 = y1 / d1 - l21 * s2
    return y0 / d0 - l10 * s1 - l20 * s2, s1, s2


def _levenberg_marquardt(problem: _EllipseProblem, p0: Sequence[float], lower: Sequence[float],
                         upper: Sequence[float], tau: float, gtol: float, max_iterations: int) -> _FitOutcome:
    """Levenberg-Marquardt (Nielsen damping) on the variable-projection residuals, box-clipped (NaN propagates
    through the clipping as in np.clip)."""
    (lo0, lo1, lo2), (up0, up1, up2) = lower, upper
    p = [min(max(p0[0], lo0), up0), min(max(p0[1], lo1), up1), min(max(p0[2], lo2), up2)]
    cost, hessian, gradient, amplitude = problem.evaluate(p)
    mu = tau * float(np.max(np.diag(hessian)))
    nu = 2.0
    for _ in range(max_iterations):
        g0, g1, g2 = gradient
        if abs(g0) <= gtol and abs(g1) <= gtol and abs(g2) <= gtol:
            return _FitOutcome(p, amplitude, False)
        try:
            s0, s1, s2 = _solve_damped(hessian, mu, gradient)
        except np.linalg.LinAlgError:
            return _FitOutcome(p, amplitude, False)
        p_new = [min(max(p[0] + s0, lo0), up0), min(max(p[1] + s1, lo1), up1), min(max(p[2] + s2, lo2), up2)]
        s0, s1, s2 = p_new[0] - p[0], p_new[1] - p[1], p_new[2] - p[2]
        if math.sqrt(s0 * s0 + s1 * s1 + s2 * s2) <= 1e-8 * (math.sqrt(p[0] * p[0] + p[1] * p[1] + p[2] * p[2])
                                                             + 1e-8):
            return _FitOutcome(p, amplitude, False)
        try:
            cost_new, hessian_new, gradient_new, amplitude_new = problem.evaluate(p_new)
        except FloatingPointError:
            mu *= nu
            nu *= 2.0
            continue
        predicted = 0.5 * (s0 * (mu * s0 - g0) + s1 * (mu * s1 - g1) + s2 * (mu * s2 - g2))
        rho = (cost - cost_new) / predicted if predicted > 0 else -1.0
        if rho > 0:
            p, hessian, gradient, amplitude, cost = p_new, hessian_new, gradient_new, amplitude_new, cost_new
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
    problem = _EllipseProblem(dx, dy, data, 1.0, scales, np.zeros((2, 3)), fluxes)
    eta_max = -math.log(config.psf_min_axis_ratio)
    lower = [-eta_max, -eta_max, math.log(config.psf_min_radius)]
    upper = [eta_max, eta_max, MAX_LOG_RADIUS]
    p0 = [0.0, 0.0, math.log(config.psf_initial_radius)]
    outcome = _levenberg_marquardt(problem, p0, lower, upper, config.psf_tau, config.psf_gradient_tolerance,
                                   config.max_iterations)
    inner = _matrix(_ellipse_from_parameters(outcome.parameters))
    covariances = np.stack([inner, ratio2 * inner])
    if not config.use_shapelet_terms:
        coefficients = np.zeros((2, DERIVATIVE_TERMS))
        coefficients[:, 0] = outcome.amplitude * fluxes
    else:
        design = _GaussianSet(covariances, dx, dy).derivative_basis().reshape(2 * DERIVATIVE_TERMS, -1)
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


def _ellipse_pixels(q: np.ndarray, x: float, y: float, scale: float, shape: tuple[int, int]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs) of the pixel centres inside the ellipse q * scale^2 centred on (x, y), in row-major order.

    Rows are scanned in chunks of about ELLIPSE_CHUNK pixels; a pixel outside the image of `shape` raises
    FitRegionError at once (the fit region would leave the image), so memory stays bounded for huge ellipses.
    """
    qs = q * scale * scale
    half_x, half_y = math.sqrt(qs[0, 0]), math.sqrt(qs[1, 1])
    if not (math.isfinite(half_x) and math.isfinite(half_y)) or half_x * half_y > 1e8:
        raise FitRegionError("ellipse too large")
    height, width = shape
    xs = np.arange(math.ceil(x - half_x), math.floor(x + half_x) + 1)
    all_ys = np.arange(math.ceil(y - half_y), math.floor(y + half_y) + 1)
    inv = np.linalg.inv(qs)
    ddx = xs - x
    rows_per_chunk = max(1, ELLIPSE_CHUNK // max(xs.size, 1))
    out_ys, out_xs = [], []
    for start in range(0, all_ys.size, rows_per_chunk):
        ys = all_ys[start : start + rows_per_chunk]
        ddy = (ys - y)[:, None]
        inside = inv[0, 0] * ddx * ddx + 2.0 * inv[0, 1] * ddx * ddy + inv[1, 1] * ddy * ddy <= 1.0
        rows, cols = np.nonzero(inside)
        chunk_ys, chunk_xs = ys[rows], xs[cols]
        if chunk_ys.size and (chunk_ys[0] < 0 or chunk_ys[-1] >= height or chunk_xs.min() < 0
                              or chunk_xs.max() >= width):
            raise FitRegionError("fit region leaves the image")
        out_ys.append(chunk_ys)
        out_xs.append(chunk_xs)
    if not out_ys:
        return all_ys[:0], xs[:0]
    return np.concatenate(out_ys), np.concatenate(out_xs)


def _grown_footprint(footprint_ys: np.ndarray, footprint_xs: np.ndarray, grow: int) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs) of the footprint dilated by a disk of radius `grow` (pixels within Euclidean distance `grow`)."""
    if footprint_ys.size == 0:
        return footprint_ys, footprint_xs
    y0, x0 = int(footprint_ys.min()) - grow, int(footprint_xs.min()) - grow
    shape = (int(footprint_ys.max()) + grow - y0 + 1, int(footprint_xs.max()) + grow - x0 + 1)
    region = np.zeros(shape, dtype=bool)
    region[footprint_ys - y0, footprint_xs - x0] = True
    # horizontal dilations by every half-width the disk needs, then the union of their vertical shifts
    half_widths = [math.isqrt(grow * grow - dy * dy) for dy in range(grow + 1)]
    horizontal = {0: region}
    current = region.copy()
    for width in range(1, grow + 1):
        current[:, width:] |= region[:, :-width]
        current[:, :-width] |= region[:, width:]
        if width in half_widths:
            horizontal[width] = current.copy()
    grown = horizontal[half_widths[0]].copy()
    for dy in range(1, grow + 1):
        band = horizontal[half_widths[dy]]
        grown[dy:] |= band[:-dy]
        grown[:-dy] |= band[dy:]
    ys, xs = np.nonzero(grown)
    return ys + y0, xs + x0


def _fit_pixels(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, grown_ys: np.ndarray,
                grown_xs: np.ndarray, x: float, y: float, ellipses: list[np.ndarray],
                config: ModelFluxConfig) -> _FitPixels:
    """Grown footprint (`_grown_footprint`) U the ellipses x radius_input_factor, minus bad pixels."""
    region_parts = [(grown_ys, grown_xs)] + [_ellipse_pixels(q, x, y, config.radius_input_factor, image.shape)
                                             for q in ellipses]
    y0 = min(int(part[0].min()) for part in region_parts if part[0].size)
    x0 = min(int(part[1].min()) for part in region_parts if part[1].size)
    y1 = max(int(part[0].max()) for part in region_parts if part[0].size)
    x1 = max(int(part[1].max()) for part in region_parts if part[1].size)
    region = np.zeros((y1 - y0 + 1, x1 - x0 + 1), dtype=bool)
    for ys, xs in region_parts:
        region[ys - y0, xs - x0] = True
    ys, xs = np.nonzero(region)
    height, width = image.shape
    if y0 < 0 or x0 < 0 or y1 >= height or x1 >= width:
        raise FitRegionError("fit region leaves the image")
    ys += y0
    xs += x0
    good = (mask[ys, xs] & config.bad_pixel_bits) == 0
    n_good = int(np.count_nonzero(good))
    if ys.size - n_good > config.max_bad_pixel_fraction * ys.size:
        raise FitRegionError("too many bad pixels")
    if n_good < ys.size:
        ys, xs = ys[good], xs[good]
    mean_variance = float(np.mean(variance[ys, xs], dtype=np.float64))
    if not mean_variance > 0:
        raise FitRegionError("non-positive variance")
    weight = 1.0 / math.sqrt(mean_variance)
    data = np.asarray(image[ys, xs], dtype=np.float64) * weight
    return _FitPixels(xs - x, ys - y, data, weight)


def _convolved_covariances(profile: Profile, q: Ellipse, psf_model: PsfModel) -> np.ndarray:
    """(G*K, 3) rows (Cxx, Cxy, Cyy) of v_g Q + P_k, PSF component major."""
    return profile.variances[:, None] * np.array(q) + _psf_rows(psf_model)[:, None]


def _psf_rows(psf_model: PsfModel) -> np.ndarray:
    """(K, 3) rows (Pxx, Pxy, Pyy) of the PSF component covariances."""
    return psf_model.covariances.reshape(-1, 4)[:, [0, 1, 3]]


def _model_vector(profile: Profile, q: Ellipse, psf_model: PsfModel, dx: np.ndarray, dy: np.ndarray,
                  full_psf: bool) -> np.ndarray:
    """PSF-convolved unit-flux profile of ellipse q at the offsets (full shapelet PSF or Gaussian part).

    Every Gaussian-derivative basis function is N_k times a quadratic polynomial of the offsets, so the model
    is sum_k N_k (c_k . monomials) with per-Gaussian polynomial coefficients c_k."""
    covariances = _convolved_covariances(profile, q, psf_model).reshape(-1, 3)
    inverses, det = _inverse_covariances(covariances)
    norm = 1.0 / (2.0 * math.pi * np.sqrt(det))
    if not full_psf:
        polynomial = (np.outer(psf_model.gaussian_fluxes, profile.fluxes).ravel() * norm)[None, :]
    else:
        w = (psf_model.coefficients[:, None, :] * profile.fluxes[None, :, None]).reshape(-1, DERIVATIVE_TERMS).T
        ixx, ixy, iyy = inverses.T
        # G, -ux G, -uy G, (ux^2 - ixx) G, (ux uy - ixy) G, (uy^2 - iyy) G with u = C^-1 (dx, dy)
        polynomial = np.stack([
            w[0] - w[3] * ixx - w[4] * ixy - w[5] * iyy,
            -(w[1] * ixx + w[2] * ixy),
            -(w[1] * ixy + w[2] * iyy),
            w[3] * ixx * ixx + w[4] * ixx * ixy + w[5] * ixy * ixy,
            2.0 * w[3] * ixx * ixy + w[4] * (ixx * iyy + ixy * ixy) + 2.0 * w[5] * ixy * iyy,
            w[3] * ixy * ixy + w[4] * ixy * iyy + w[5] * iyy * iyy,
        ]) * norm  # (6, K) over monomials 1, dx, dy, dx^2, dx dy, dy^2
    model = np.empty(dx.size)
    for start in range(0, dx.size, PIXEL_BLOCK):
        bx, by = dx[start:start + PIXEL_BLOCK], dy[start:start + PIXEL_BLOCK]
        gaussians = inverses @ np.stack([-0.5 * (bx * bx), -(bx * by), -0.5 * (by * by)])
        np.exp(gaussians, out=gaussians)
        terms = polynomial @ gaussians  # (6 or 1, n): sum_k c_k N_k per monomial
        if full_psf:
            terms[1:3] *= (bx, by)
            terms[3:] *= (bx * bx, bx * by, by * by)
        np.add.reduce(terms, axis=0, out=model[start:start + PIXEL_BLOCK])
    return model


def _fit_profile(profile: Profile, psf_model: PsfModel, pixels: _FitPixels, q0: np.ndarray,
                 config: ModelFluxConfig) -> ProfileFit:
    """Nonlinear ellipse fit (Gaussian PSF part) then the linear amplitude with the full PSF model."""
    n_psf = psf_model.covariances.shape[0]
    problem = _EllipseProblem(pixels.dx, pixels.dy, pixels.data, pixels.weight, np.tile(profile.variances, n_psf),
                              np.repeat(_psf_rows(psf_model), profile.variances.size, axis=0),
                              np.outer(psf_model.gaussian_fluxes, profile.fluxes).ravel())
    eta_max = -math.log(config.min_axis_ratio)
    lower = [-eta_max, -eta_max, math.log(config.min_radius)]
    upper = [eta_max, eta_max, MAX_LOG_RADIUS]
    try:
        outcome = _levenberg_marquardt(problem, _parameters_from_ellipse(q0), lower, upper, config.tau,
                                       config.gradient_tolerance, config.max_iterations)
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
