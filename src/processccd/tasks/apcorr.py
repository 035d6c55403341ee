"""Aperture correction: computation from the selected stars and application to fluxes (measurement-spec.md §3, §4).

The correction is the ratio flux.sinc / flux.psf of bright stars, fitted over the frame by a polynomial of
total degree `order` in raw pixel coordinates, terms 1, y, x, y², xy, x², ... (2013 polyStyle "standard"):
weighted least squares with rows multiplied by 1/σ² (effective weights 1/σ⁴), and a constant error
σa² = Σ σ⁻⁸ res² / Σ σ⁻⁸.

`fit: chebyshev` (the LSST-2020 profile) fits as LSST's meas_algorithms measureApCorr did from 2016 on
(ChebyshevBoundedField): Chebyshev polynomials T_i(x')·T_j(y'), i + j <= order, in coordinates mapped to
[-1, 1] over the image's bounding box, unweighted least squares, `clip_iterations` rounds of fitting and
dropping the stars whose residual exceeds `clip_sigma` × the residuals' RMS, then a final fit; the order is
lowered until the fit keeps at least one degree of freedom; σa is the RMS of the last clipping round.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml

from processccd.butler import dump_yaml
from processccd.image import Exposure
from processccd.meas.aperture_flux import sinc_flux_many
from processccd.meas.circular_aperture import circular_aperture_fluxes
from processccd.meas.psf_flux import psf_flux_many, psf_images_at

log = logging.getLogger("processCcd.calibrate.apCorr")

# Fluxes corrected besides flux.psf (2013 ScaledFlux algorithms) -> their PSF-factor column, or None when the
# measurement already scaled the flux by p_psf / p (flux.gaussian, see tasks/measurement.py).
SCALED_FLUXES: dict[str, str | None] = {
    "flux.gaussian": "flux.gaussian.psffactor",
    "multishapelet.exp.flux": "multishapelet.exp.psffactor",
    "multishapelet.dev.flux": "multishapelet.dev.psffactor",
    "multishapelet.combo.flux": "multishapelet.combo.psffactor",
}


@dataclass
class ApCorrConfig:
    """Aperture-correction fit (2013: alg1 flux.psf, alg2 flux.sinc, order 2, no clipping)."""

    order: int = 2  # total degree of the polynomial in (x, y); lowered when there are too few stars
    sinc_radius: float = 7.0  # radius of the flux.sinc aperture [pixels]
    reject_flags: tuple[str, ...] = ("flags.pixel.interpolated.center",)  # stars with these flags are not used
    centre: tuple[float, float] | None = None  # where the central value is logged; None: (W/2, H/2)
    reference_flux: Literal["flux.sinc", "flux.circular"] = field(default="flux.sinc", metadata={"doc": (
        "the flux flux.psf is corrected to: flux.sinc of sinc_radius (2013) or flux.circular, the circular "
        "aperture of circular_radius (sep.sum_circle, exact overlap; LSST 2020: 12 px)")})
    circular_radius: float = field(default=12.0, metadata={"doc": "radius [px] of the flux.circular reference"})
    fit: Literal["polynomial2013", "chebyshev"] = field(default="polynomial2013", metadata={"doc": (
        "polynomial2013: 2013's fit (raw pixel coordinates, weights 1/sigma^4, no clipping); chebyshev: LSST "
        "2016-2020 measureApCorr (Chebyshev polynomials over the image box, unweighted, sigma clipping; the "
        "fluxes' errors are scaled by the correction, its RMS error is not added, as LSST's applyApCorr)")})
    min_snr: float = field(default=0.0, metadata={"doc": (
        "only stars whose flux.psf S/N (as measured for the fit) is at least this (0: all, as 2013; LSST's "
        "measureApCorr science selector: 200); if fewer than min_snr_stars pass, the min_snr_stars of highest S/N")})
    min_snr_stars: int = field(default=10, metadata={"doc": "see min_snr"})
    clip_iterations: int = field(default=4, metadata={"doc": "chebyshev fit: rounds of sigma clipping (LSST 4)"})
    clip_sigma: float = field(default=3.0, metadata={"doc": (
        "chebyshev fit: stars with |residual| > clip_sigma x RMS of the residuals are dropped (LSST 3)")})


def polynomial_terms(x: np.ndarray, y: np.ndarray, order: int) -> np.ndarray:
    """Design matrix (N, n_terms): for degree d = 0..order, terms y^(d-k)·x^k, k = 0..d."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    return np.column_stack([y ** (d - k) * x ** k for d in range(order + 1) for k in range(d + 1)])


def n_terms(order: int) -> int:
    return (order + 1) * (order + 2) // 2


@dataclass(frozen=True)
class ApCorrStars:
    """The stars of the fit: source ids, positions, fluxes, ratio sinc/psf and its error."""

    ids: np.ndarray
    x: np.ndarray
    y: np.ndarray
    flux_psf: np.ndarray
    flux_sinc: np.ndarray
    ratio: np.ndarray
    ratio_err: np.ndarray


@dataclass(frozen=True)
class ApertureCorrection:
    """a(x, y) = Σ coefficient · term(x, y) with constant error; evaluate anywhere on the frame."""

    order: int
    coefficients: np.ndarray
    error: float
    n_candidates: int  # stars offered to the fit (the selected stars)
    stars: ApCorrStars
    reference_flux: str = "flux.sinc"  # the flux the correction leads to (ApCorrConfig.reference_flux)
    fit: str = "polynomial2013"  # ApCorrConfig.fit
    bbox: tuple[float, float, float, float] | None = None  # chebyshev: (x0, y0, x1, y1) mapped to [-1, 1]²
    used: np.ndarray | None = None  # chebyshev: which stars survived the clipping (bool per star)

    @property
    def n_stars(self) -> int:
        return len(self.stars.ratio)

    def evaluate(self, x: np.ndarray | float, y: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """(a, σa) at pixel positions (x, y)."""
        x_arr = np.asarray(x, dtype=np.float64)
        y_arr = np.asarray(y, dtype=np.float64)
        if self.fit == "chebyshev":
            design = chebyshev_terms(x_arr, y_arr, self.order, self.bbox)
        else:
            design = polynomial_terms(x_arr, y_arr, self.order)
        values = (design @ self.coefficients).reshape(x_arr.shape)
        return values, np.full(values.shape, self.error)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form for YAML."""
        stars = self.stars
        record: dict[str, Any] = {
            "description": f"aperture correction {self.reference_flux}/flux.psf; a(x, y) = sum of coefficient * term, "
                           "terms y^(d-k) x^k for d = 0..order, k = 0..d, raw 0-based pixel coordinates",
            "order": self.order,
            "coefficients": [float(c) for c in self.coefficients],
            "error": float(self.error),
            "n_candidates": int(self.n_candidates),
            "stars": [
                {"id": int(stars.ids[i]), "x": float(stars.x[i]), "y": float(stars.y[i]),
                 "flux.psf": float(stars.flux_psf[i]), self.reference_flux: float(stars.flux_sinc[i]),
                 "ratio": float(stars.ratio[i]), "ratio.err": float(stars.ratio_err[i])}
                for i in range(len(stars.ratio))
            ],
        }
        if self.fit == "chebyshev":
            record["description"] = (
                f"aperture correction {self.reference_flux}/flux.psf; a(x, y) = sum of coefficient * T_(d-k)(y') "
                "T_k(x') for d = 0..order, k = 0..d (Chebyshev polynomials), x' = (2x - x0 - x1)/(x1 - x0), "
                "y' likewise, over bbox [x0, y0, x1, y1] in 0-based pixel coordinates")
            record["fit"] = "chebyshev"
            record["bbox"] = [float(v) for v in self.bbox]
            for row, used in zip(record["stars"], self.used, strict=True):
                row["used"] = bool(used)
        return record

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ApertureCorrection:
        rows = data.get("stars") or []
        reference = "flux.circular" if rows and "flux.circular" in rows[0] else "flux.sinc"

        def column(key: str, dtype: type = float) -> np.ndarray:
            return np.array([row[key] for row in rows], dtype=dtype)

        stars = ApCorrStars(column("id", np.int64), column("x"), column("y"), column("flux.psf"),
                            column(reference), column("ratio"), column("ratio.err"))
        fit = data.get("fit", "polynomial2013")
        bbox = tuple(float(v) for v in data["bbox"]) if fit == "chebyshev" else None
        used = column("used", bool) if fit == "chebyshev" else None
        return cls(int(data["order"]), np.array(data["coefficients"], dtype=np.float64), float(data["error"]),
                   int(data["n_candidates"]), stars, reference, fit, bbox, used)

    def write_yaml(self, path: Path) -> None:
        path.write_text(dump_yaml(self.to_dict(), sort_keys=False))

    @classmethod
    def read_yaml(cls, path: Path) -> ApertureCorrection:
        return cls.from_dict(yaml.safe_load(Path(path).read_text()))


def fit_aperture_correction(x: np.ndarray, y: np.ndarray, ratio: np.ndarray, ratio_err: np.ndarray, order: int
                            ) -> tuple[int, np.ndarray, float]:
    """Weighted fit of `ratio` (rows × 1/σ², effective weights 1/σ⁴) and the 1/σ⁸-weighted error.

    The order is lowered until there are at least as many stars as terms. Returns (order, coefficients, σa);
    with no star at all, a = 1 and σa = 0.
    """
    n = len(ratio)
    if n == 0:
        return 0, np.ones(1), 0.0
    while order > 0 and n < n_terms(order):
        order -= 1
    design = polynomial_terms(x, y, order)
    row_weight = 1.0 / ratio_err**2
    weighted = design * row_weight[:, None]
    scale = np.max(np.abs(weighted), axis=0)  # column scaling only conditions the solve
    scale[scale == 0] = 1.0
    solution = np.linalg.lstsq(weighted / scale, ratio * row_weight, rcond=None)[0]
    coefficients = solution / scale
    residual = ratio - design @ coefficients
    error_weight = row_weight**4  # the error fit's rows carry 1/σ⁴, so its weights are 1/σ⁸
    variance = float(np.sum(error_weight * residual**2) / np.sum(error_weight))
    return order, coefficients, float(np.sqrt(variance))


def chebyshev_terms(x: np.ndarray, y: np.ndarray, order: int, bbox: tuple[float, float, float, float]
                    ) -> np.ndarray:
    """Design matrix (N, n_terms): T_(d-k)(y')·T_k(x') for d = 0..order, k = 0..d, with x', y' the positions
    mapped linearly from the box [x0, x1] × [y0, y1] to [-1, 1] (the triangular ChebyshevBoundedField)."""
    x0, y0, x1, y1 = bbox
    xs = (2 * np.asarray(x, dtype=np.float64).reshape(-1) - x0 - x1) / (x1 - x0)
    ys = (2 * np.asarray(y, dtype=np.float64).reshape(-1) - y0 - y1) / (y1 - y0)
    tx = np.polynomial.chebyshev.chebvander(xs, order)
    ty = np.polynomial.chebyshev.chebvander(ys, order)
    return np.column_stack([ty[:, d - k] * tx[:, k] for d in range(order + 1) for k in range(d + 1)])


def image_bbox(shape: tuple[int, int]) -> tuple[float, float, float, float]:
    """The pixel area of an image of `shape` (H, W) in 0-based centre coordinates: (-0.5, -0.5, W - 0.5, H - 0.5)."""
    height, width = shape
    return -0.5, -0.5, width - 0.5, height - 0.5


def fit_chebyshev_clipped(x: np.ndarray, y: np.ndarray, ratio: np.ndarray, order: int,
                          bbox: tuple[float, float, float, float], clip_iterations: int = 4, clip_sigma: float = 3.0
                          ) -> tuple[int, np.ndarray, float, np.ndarray]:
    """Unweighted Chebyshev fit of `ratio` over `bbox` with sigma clipping (LSST 2016-2020 measureApCorr).

    The order is lowered until n - n_terms >= 1 (or to 0). Each of `clip_iterations` rounds fits the kept stars
    and keeps those with |residual| <= clip_sigma × RMS(residuals); a final fit follows. Returns (order,
    coefficients, σa = the last round's RMS, or the final fit's with no round, used mask); with no star, a = 1.
    """
    n = len(ratio)
    if n == 0:
        return 0, np.ones(1), 0.0, np.zeros(0, dtype=bool)
    while order > 0 and n - n_terms(order) < 1:
        order -= 1
    design = chebyshev_terms(x, y, order, bbox)
    used = np.ones(n, dtype=bool)
    rms = None
    for _ in range(clip_iterations):
        coefficients = np.linalg.lstsq(design[used], ratio[used], rcond=None)[0]
        residual = design @ coefficients - ratio
        rms = float(np.sqrt(np.mean(residual[used] ** 2)))
        used &= np.abs(residual) <= clip_sigma * rms
    coefficients = np.linalg.lstsq(design[used], ratio[used], rcond=None)[0]
    if rms is None:
        rms = float(np.sqrt(np.mean((design[used] @ coefficients - ratio[used]) ** 2)))
    return order, coefficients, rms, used


def bright_enough(snr: np.ndarray, min_snr: float, min_stars: int) -> np.ndarray:
    """Mask of the stars with `snr` >= `min_snr`, or, when fewer than `min_stars` are, of the `min_stars` stars of
    highest S/N (all if there are not that many); NaN S/N never passes."""
    snr = np.where(np.isfinite(snr), snr, -np.inf)
    passed = snr >= min_snr
    if passed.sum() >= min_stars:
        return passed
    chosen = np.zeros(len(snr), dtype=bool)
    chosen[np.argsort(-snr, kind="stable")[:min_stars]] = True
    return chosen & np.isfinite(snr)


class ApCorrTask:
    """Measures flux.psf and flux.sinc afresh on the exposure at the selected stars and fits the ratio."""

    def __init__(self, config: ApCorrConfig | None = None) -> None:
        self.config = config or ApCorrConfig()

    def run(self, exposure: Exposure, columns: dict[str, np.ndarray], star_index: np.ndarray, warn: bool = True
            ) -> ApertureCorrection:
        """`star_index` indexes `columns` (the calibration-stage sources); the image is used as it is
        (2013: E2, no noise replacement). `warn=False`: no WARNING when there is no star (the caller gave one)."""
        config = self.config
        star_index = np.asarray(star_index, dtype=np.int64)
        usable = np.ones(len(star_index), dtype=bool)
        for flag in config.reject_flags:
            usable &= ~np.asarray(columns[flag], dtype=bool)[star_index]
        index = star_index[usable]
        x = columns["centroid.sdss.x"][index].astype(np.float64)
        y = columns["centroid.sdss.y"][index].astype(np.float64)
        if len(index):
            psf_images = psf_images_at(exposure.psf, x, y)
            flux_psf, err_psf, _ = psf_flux_many(exposure.image, exposure.variance, x, y, psf_images)
            if config.reference_flux == "flux.circular":
                circular = circular_aperture_fluxes(exposure.image, exposure.variance, exposure.mask, x, y,
                                                    (config.circular_radius,))
                flux_sinc, err_sinc = circular.flux[0], circular.flux_err[0]
            else:
                flux_sinc, err_sinc = sinc_flux_many(exposure.image, exposure.variance, x, y, config.sinc_radius)
        else:
            flux_psf = err_psf = flux_sinc = err_sinc = np.zeros(0)
        positive = (flux_psf > 0) & (flux_sinc > 0)
        if config.min_snr > 0 and len(index):
            positive &= bright_enough(flux_psf / err_psf, config.min_snr, config.min_snr_stars)
        ratio = flux_sinc[positive] / flux_psf[positive]
        ratio_err = ratio * np.hypot(err_psf[positive] / flux_psf[positive],
                                     err_sinc[positive] / flux_sinc[positive])
        finite = np.isfinite(ratio) & np.isfinite(ratio_err) & (ratio_err > 0)
        keep = np.flatnonzero(positive)[finite]
        stars = ApCorrStars(columns["id"][index[keep]], x[keep], y[keep], flux_psf[keep], flux_sinc[keep],
                            ratio[finite], ratio_err[finite])
        if config.fit == "chebyshev":
            bbox = image_bbox(exposure.shape)
            order, coefficients, error, used = fit_chebyshev_clipped(
                stars.x, stars.y, stars.ratio, config.order, bbox, config.clip_iterations, config.clip_sigma)
            result = ApertureCorrection(order, coefficients, error, len(star_index), stars, config.reference_flux,
                                        "chebyshev", bbox, used)
        else:
            order, coefficients, error = fit_aperture_correction(stars.x, stars.y, stars.ratio, stars.ratio_err,
                                                                 config.order)
            result = ApertureCorrection(order, coefficients, error, len(star_index), stars, config.reference_flux)
        self._log(result, exposure, warn)
        return result

    def _log(self, result: ApertureCorrection, exposure: Exposure, warn: bool = True) -> None:
        ratio = result.stars.ratio
        if len(ratio) == 0:
            if warn:
                log.warning("no star for the aperture correction; using 1.0")
        else:
            spread = float(np.std(ratio))
            log.info("mean apCorr: %.4f +/- %.4f", float(np.mean(ratio)), spread)
            if result.used is not None:
                log.info("Aperture correction (Chebyshev, order %d): RMS %.4f from %d stars, %d clipped", result.order,
                         result.error, int(result.used.sum()), int((~result.used).sum()))
        if result.order < self.config.order and len(ratio):
            kind = "a constant aperture correction" if result.order == 0 else f"order {result.order}"
            log.warning("only %d stars for an order-%d aperture correction: using %s", len(ratio),
                        self.config.order, kind)
        cx, cy = self.central_position(exposure)
        value, error = result.evaluate(cx, cy)
        log.info("Central aperture correction using %d/%d stars: %.4f +/- %.4f", result.n_stars,
                 result.n_candidates, float(value), float(error))

    def central_position(self, exposure: Exposure) -> tuple[float, float]:
        """Where the central value is reported (2013: (W/2, H/2) = (1024, 680.5))."""
        if self.config.centre is not None:
            return self.config.centre
        height, width = exposure.shape
        return width / 2.0, height / 2.0


def apply_aperture_correction(columns: dict[str, np.ndarray], ap_corr: ApertureCorrection) -> None:
    """Correct the scaled fluxes in place and fill `aperturecorrection(.err)` (measurement-spec.md §3).

    (a, σa) at the slot centroid; F'' = a·F', E'' = sqrt((a·E')² + (σa·F')²) with F' = F·p_psf/p.
    flux.sinc is not corrected. If flux.psf or its PSF factor is not finite (its flag), nothing is corrected
    for that source; a flux whose own PSF factor is not finite keeps its uncorrected value.
    The Chebyshev fit (LSST 2016-2020: applyApCorr with UseNaiveFluxErr) only scales the error, E'' = a·E':
    its σa, the RMS scatter of the stars' ratios, is recorded in aperturecorrection.err, not added.
    """
    a, sigma_a = ap_corr.evaluate(columns["centroid.sdss.x"], columns["centroid.sdss.y"])
    columns["aperturecorrection"] = a.astype(np.float64)
    columns["aperturecorrection.err"] = sigma_a.astype(np.float64)
    if ap_corr.fit == "chebyshev":
        sigma_a = np.zeros_like(sigma_a)
    psf_factor = columns["flux.psf.psffactor"]
    canonical_ok = np.isfinite(columns["flux.psf"]) & np.isfinite(psf_factor)
    _correct(columns, "flux.psf", np.ones_like(a), canonical_ok, a, sigma_a)
    for name, factor_column in SCALED_FLUXES.items():
        if name not in columns:
            continue
        if factor_column is None or factor_column not in columns:
            scale = np.ones_like(a)
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                scale = psf_factor / columns[factor_column]
        _correct(columns, name, scale, canonical_ok & np.isfinite(scale), a, sigma_a)


def _correct(columns: dict[str, np.ndarray], name: str, scale: np.ndarray, ok: np.ndarray, a: np.ndarray,
             sigma_a: np.ndarray) -> None:
    flux = columns[name].astype(np.float64) * scale
    err = columns[f"{name}.err"].astype(np.float64) * scale
    new_flux = columns[name].astype(np.float64)
    new_err = columns[f"{name}.err"].astype(np.float64)
    new_flux[ok] = a[ok] * flux[ok]
    new_err[ok] = np.hypot(a[ok] * err[ok], sigma_a[ok] * flux[ok])
    columns[name] = new_flux
    columns[f"{name}.err"] = new_err
