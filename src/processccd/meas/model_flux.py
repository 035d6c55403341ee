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
from dataclasses import dataclass, field
from types import ModuleType
from typing import Literal

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


def _kernels() -> ModuleType:
    """The compiled kernels (`model_flux_kernels`), imported on first use: numba costs ~0.3 s and ~120 MB to
    import, which a process that only reads the configuration (the process-ccd client) should not pay."""
    from processccd.meas import model_flux_kernels

    return model_flux_kernels


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
    # Shortcuts to the optimum of the 2013 iteration (model_flux_kernels.fit_ellipse; 0 = the 2013 path).
    # Measured on the 10 demo frames (bench/model_fit_compare.py): see docs/benchmark.md.
    point_ratio: float = 1e-4  # a shrinking fit whose ellipse is < 1e-4 x the PSF tries zero size
    cost_tolerance: float = 1e-9  # stop when a step gains < 1e-9 of the cost (ellipse well inside the box)
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
    combo_psf_ellipses: Literal["source", "psf"] = field(default="source", metadata={"doc": (
        "ellipses of multishapelet.combo's PSF-factor fit: 'source' = 2013 (the source's own fitted exp and dev "
        "ellipses, which 2013's FitProfile stored as psffactor.ellipse; compact galaxies get a combo up to 2x "
        "low), 'psf' = the PSF fits' ellipses, as for exp and dev (per cell)")})


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


Ellipse = tuple[float, float, float]  # (Qxx, Qxy, Qyy)


def _matrix(q: Ellipse) -> np.ndarray:
    return np.array([[q[0], q[1]], [q[1], q[2]]])


def _psf_rows(psf_model: PsfModel) -> np.ndarray:
    """(K, 3) rows (Pxx, Pxy, Pyy) of the PSF component covariances."""
    return np.ascontiguousarray(psf_model.covariances.reshape(-1, 4)[:, [0, 1, 3]])


def _profile_fit(values: np.ndarray) -> ProfileFit:
    """ProfileFit from the kernels' FIT_FIELDS layout."""
    flux, flux_err, flag, qxx, qxy, qyy, n_pixels, max_iter = values.tolist()
    return ProfileFit(flux, flux_err, bool(flag), (qxx, qxy, qyy), int(n_pixels), bool(max_iter))


# ------------------------------------------------------------------------------------------- PSF model


def fit_psf_model(psf: Psf, x: float, y: float, config: ModelFluxConfig | None = None,
                  image: np.ndarray | None = None) -> PsfModel:
    """multishapelet.psf at (x, y): double Gaussian ellipse fit, then the order-2 expansions (linear), on the
    unit-sum PSF image. `image` is `psf.compute_image(x, y)` when the caller has it already."""
    config = config or ModelFluxConfig()
    image = psf.compute_image(x, y) if image is None else image
    covariances, coefficients, gaussian_fluxes = _kernels().psf_image_model_fit(
        image, float(image.sum()), float(x), float(y), config.psf_radius_ratio, config.psf_peak_ratio,
        config.psf_initial_radius, config.psf_min_radius, config.psf_min_axis_ratio, config.psf_tau,
        config.psf_gradient_tolerance, config.max_iterations, config.use_shapelet_terms)
    return PsfModel(covariances, coefficients, gaussian_fluxes)


# ------------------------------------------------------------------------------------------ profile fits


@dataclass
class _FitPixels:
    """Weighted data and offsets of the fit pixels."""

    dx: np.ndarray
    dy: np.ndarray
    data: np.ndarray  # already multiplied by `weight`
    weight: float


def _grown_footprint(footprint_ys: np.ndarray, footprint_xs: np.ndarray, grow: int) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs) of the footprint dilated by a disk of radius `grow` (pixels within Euclidean distance `grow`)."""
    return _kernels().grown_footprint(np.asarray(footprint_ys, dtype=np.int64),
                                              np.asarray(footprint_xs, dtype=np.int64), int(grow))




def _fit_pixels(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, grown_ys: np.ndarray,
                grown_xs: np.ndarray, x: float, y: float, ellipses: list[np.ndarray],
                config: ModelFluxConfig) -> _FitPixels:
    """Grown footprint (`_grown_footprint`) U the ellipses x radius_input_factor, minus bad pixels (row-major);
    the data weighted by 1 / sqrt(mean variance of those pixels). FitRegionError when an ellipse is too large,
    the region leaves the image, has more than max_bad_pixel_fraction bad pixels, or no positive variance."""
    rows = np.array([[q[0, 0], q[0, 1], q[1, 1]] for q in ellipses], dtype=np.float64)
    status, dx, dy, data, weight = _kernels().fit_pixels(
        image, variance, mask, np.asarray(grown_ys, dtype=np.int64), np.asarray(grown_xs, dtype=np.int64),
        float(x), float(y), rows, float(config.radius_input_factor), int(config.bad_pixel_bits),
        float(config.max_bad_pixel_fraction))
    kernels = _kernels()
    if status != kernels.REGION_OK:
        raise FitRegionError({kernels.REGION_LEAVES_IMAGE: "fit region leaves the image",
                              kernels.REGION_TOO_MANY_BAD: "too many bad pixels",
                              kernels.REGION_BAD_VARIANCE: "non-positive variance",
                              kernels.REGION_TOO_LARGE: "ellipse too large",
                              kernels.REGION_DISJOINT: "ellipses do not overlap the footprint"}[status])
    return _FitPixels(dx, dy, data, weight)


def _model_vector(profile: Profile, q: Ellipse, psf_model: PsfModel, dx: np.ndarray, dy: np.ndarray,
                  full_psf: bool) -> np.ndarray:
    """PSF-convolved unit-flux profile of ellipse q at the offsets (full shapelet PSF or Gaussian part).

    Every Gaussian-derivative basis function is N_k times a quadratic polynomial of the offsets, so the model
    is sum_k N_k (c_k . monomials) with per-Gaussian polynomial coefficients c_k (compiled:
    `model_flux_kernels.profile_model`)."""
    return _kernels().profile_model(
        np.ascontiguousarray(dx, dtype=np.float64), np.ascontiguousarray(dy, dtype=np.float64), profile.variances,
        profile.fluxes, float(q[0]), float(q[1]), float(q[2]), _psf_rows(psf_model), psf_model.coefficients,
        psf_model.gaussian_fluxes, bool(full_psf))


def _fit_profile(profile: Profile, psf_model: PsfModel, pixels: _FitPixels, q0: np.ndarray,
                 config: ModelFluxConfig) -> ProfileFit:
    """Nonlinear ellipse fit (Gaussian PSF part) then the linear amplitude with the full PSF model."""
    return _profile_fit(_kernels().fit_profile(
        profile.variances, profile.fluxes, _psf_rows(psf_model), psf_model.coefficients, psf_model.gaussian_fluxes,
        pixels.dx, pixels.dy, pixels.data, float(pixels.weight), (float(q0[0, 0]), float(q0[0, 1]), float(q0[1, 1])),
        config.tau, config.gradient_tolerance, config.max_iterations, config.min_axis_ratio, config.min_radius,
        config.use_shapelet_terms, config.point_ratio, config.cost_tolerance))


def initial_ellipse(profile: Profile, psf_model: PsfModel, ixx: float, ixy: float, iyy: float, shape_ok: bool,
                    config: ModelFluxConfig) -> np.ndarray:
    """shape.sdss deconvolved by the PSF model (2013 MultiGaussian::deconvolve), or 0.5 x PSF ellipse."""
    return _matrix(_kernels().initial_ellipse(
        profile.mean_variance, psf_model.covariances, psf_model.gaussian_fluxes, float(ixx), float(ixy), float(iyy),
        bool(shape_ok), config.min_initial_radius, config.min_axis_ratio))


def _combo(models: np.ndarray, data: np.ndarray, singles: tuple[ProfileFit, ProfileFit]) -> tuple[float, float]:
    """multishapelet.combo (flux, err) from the weighted exp and dev model vectors (2, N) and the data
    (`model_flux_kernels.combo`: 2013 sign rules, indistinguishable models give the de Vaucouleurs result)."""
    return _kernels().combo(np.ascontiguousarray(models, dtype=np.float64),
                                    np.ascontiguousarray(data, dtype=np.float64), singles[0].flux,
                                    singles[0].flux_err, singles[1].flux, singles[1].flux_err)


def combo_psf_factor(psf_image: np.ndarray, x: float, y: float, fits: ModelFluxResult, psf_model: PsfModel,
                     p_exp: float, p_dev: float, config: ModelFluxConfig | None = None) -> float:
    """multishapelet.combo's PSF factor as 2013 computed it (FitCombo, measurement-spec.md §3): the combo fit
    on the peak-normalised PSF image at the source, with the profiles of the *source's* fitted exp and dev
    ellipses (2013's FitProfile stored the galaxy ellipse, not the PSF fit's, in psffactor.ellipse, from which
    FitCombo built its PSF models), and the combo sign rules: both amplitudes >= 0 -> their sum; one
    negative -> the other profile's PSF factor; both -> NaN (2013: the PSF-factor flag stayed set, so the
    combo flux is left uncorrected). NaN when either single fit or the combo failed."""
    config = config or ModelFluxConfig()
    if fits.exp.flag or fits.dev.flag or fits.combo_flag or not (math.isfinite(p_exp) and math.isfinite(p_dev)):
        return math.nan
    ellipses = np.array([fits.exp.ellipse, fits.dev.ellipse], dtype=np.float64)
    a_exp, a_dev = _kernels().psf_image_combo_amplitudes(
        np.ascontiguousarray(psf_image, dtype=np.float64), float(x), float(y), _PROFILE_VARIANCES, _PROFILE_FLUXES,
        ellipses, psf_model.covariances, psf_model.coefficients, psf_model.gaussian_fluxes, config.use_shapelet_terms)
    if a_exp < 0 and a_dev < 0:
        return math.nan
    if a_exp < 0:
        return p_dev
    if a_dev < 0:
        return p_exp
    return a_exp + a_dev


def _kernel_settings(config: ModelFluxConfig) -> np.ndarray:
    """The numeric settings of `model_flux_kernels.source_model_fluxes`, in its order."""
    return np.array([config.grow_footprint, config.radius_input_factor, config.max_bad_pixel_fraction,
                     config.min_initial_radius, config.min_radius, config.min_axis_ratio, config.tau,
                     config.gradient_tolerance, config.max_iterations, config.point_ratio, config.cost_tolerance],
                    dtype=np.float64)


_PROFILE_VARIANCES = np.stack([EXPONENTIAL.variances, DE_VAUCOULEURS.variances])
_PROFILE_FLUXES = np.stack([EXPONENTIAL.fluxes, DE_VAUCOULEURS.fluxes])


def model_fluxes(image: np.ndarray, variance: np.ndarray, mask: np.ndarray, footprint_ys: np.ndarray,
                 footprint_xs: np.ndarray, x: float, y: float, ixx: float, ixy: float, iyy: float, shape_ok: bool,
                 psf: Psf, config: ModelFluxConfig | None = None, psf_model: PsfModel | None = None
                 ) -> ModelFluxResult:
    """multishapelet.exp / .dev / .combo raw fluxes of one source centred at (x, y).

    `footprint_ys/xs` are the ungrown footprint pixels (full-frame), (ixx, ixy, iyy) the shape.sdss moments
    and `shape_ok` False when shape.sdss is flagged. Scale the fluxes by p_psf / p (`model_flux_psf_factors`)
    before aperture correction. Each profile is fitted on the grown footprint U its initial ellipse x
    radius_input_factor (`initial_ellipse`); the combo on the grown footprint U both fitted ellipses x
    radius_input_factor, when neither single fit is flagged.
    """
    config = config or ModelFluxConfig()
    psf_model = psf_model or fit_psf_model(psf, x, y, config)
    out = _kernels().source_model_fluxes(
        image, variance, mask, np.asarray(footprint_ys, dtype=np.int64), np.asarray(footprint_xs, dtype=np.int64),
        float(x), float(y), float(ixx), float(ixy), float(iyy), bool(shape_ok), _PROFILE_VARIANCES, _PROFILE_FLUXES,
        psf_model.covariances, psf_model.coefficients, psf_model.gaussian_fluxes, _kernel_settings(config),
        int(config.bad_pixel_bits), config.use_shapelet_terms)
    fields = _kernels().FIT_FIELDS
    combo_flux, combo_err, combo_flag = out[2 * fields:].tolist()
    return ModelFluxResult(_profile_fit(out[:fields]), _profile_fit(out[fields:2 * fields]), combo_flux, combo_err,
                           bool(combo_flag))


def model_flux_psf_factors(psf: Psf, x: float, y: float, config: ModelFluxConfig | None = None,
                           psf_model: PsfModel | None = None, image: np.ndarray | None = None
                           ) -> ModelFluxPsfFactors:
    """PSF factors of exp / dev / combo: the same fits on the peak-normalised PSF image at (x, y)
    (31 x 31 pixels, unit weights, initial ellipse 0.5 x the PSF ellipse); `image` is
    `psf.compute_image(x, y)` when the caller has it already."""
    config = config or ModelFluxConfig()
    image = psf.compute_image(x, y) if image is None else image
    psf_model = psf_model or fit_psf_model(psf, x, y, config, image)
    data, dx, dy = _kernels().psf_image_pixels(image, 1.0, float(x), float(y))
    pixels = _FitPixels(dx, dy, data, 1.0)
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
            image = self.psf.compute_image(cx, cy)
            psf_model = fit_psf_model(self.psf, cx, cy, self.config, image)
            factors = model_flux_psf_factors(self.psf, cx, cy, self.config, psf_model, image)
            p_psf = float(image.sum())
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
