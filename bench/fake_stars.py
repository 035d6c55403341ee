"""Fake-star injection (not a test by itself; tests/test_fake_stars.py runs it on one frame): flux.psf bias.

    .venv/bin/python bench/fake_stars.py [--frames 10] [--stars 150] [--injection model|empirical|both] [--json FILE]

For each demo frame: the exposure as make_exposure makes it, plus `--stars` stars of known flux (S/N 50-500
against the frame's sky variance, log-uniform) on a jittered grid; then the calibration and final stages as
process-ccd runs them, once with the default (2013) configuration and once with configs/processCcd-lsst2020.yaml.
The injected stars are not in the reference catalogue, so the aperture correction is fitted to the frame's real
stars, as for any science source. Measured: flux.psf (aperture corrected) / injected flux - 1 for the injected
stars found within 0.5 px, with S/N > 50, no other source within 10 px (and, with deblending, not deblended);
median and 1.4826 MAD, per frame and pooled.

Two injection models (`--injection`):
- `model`: the frame's psField KL PSF (`Psf.compute_image` at each position, 31 x 31), scaled to unit sum; the
  known flux is the model's sum.
- `empirical`: stars that look like the frame's real stars: the psField model at each position plus the mean
  residual (real star - its flux x the model) of the frame's aperture-correction stars (bright, reference-matched,
  unsaturated; no BAD/SAT/INTRP/CR/EDGE pixel and no other detected source within STAMP_RADIUS) on the
  background-subtracted calibration image (E2), each residual Lanczos-shifted to the pixel centre and stacked
  with weights = the stars' fluxes. Stamps are cut to the circle of STAMP_RADIUS = 25 px about the star's
  centre. Truth: the injected stamp's sum inside that circle (the unit-sum stamp times the known flux), i.e.
  the star's light within 25 px. A real star's light within 25 px is what these stars are normalised to; light
  beyond 25 px (and any background over-subtraction around the real stars) is outside this truth.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(BENCH_DIR))
import benchmark  # noqa: E402  (the demo frames)

from processccd.butler import Butler  # noqa: E402
from processccd.config import load_config  # noqa: E402
from processccd.dataid import DataId  # noqa: E402
from processccd.image import Exposure, mask_bit  # noqa: E402
from processccd.lanczos import shift_image  # noqa: E402
from processccd.psf import Psf  # noqa: E402
from processccd.tasks.make_exposure import make_exposure  # noqa: E402
from processccd.tasks.process_ccd import ProcessCcdTask  # noqa: E402

PROFILE = ROOT / "configs" / "processCcd-lsst2020.yaml"
STAMP_RADIUS = 25  # [px] extent of the empirical stars; their known flux is their light inside this circle
EXCLUDED_PLANES = ("BAD", "SAT", "INTRP", "CR", "EDGE")  # a PSF star has none of these within STAMP_RADIUS


def injected_positions(shape: tuple[int, int], n: int, rng: np.random.Generator, margin: int = 40
                       ) -> np.ndarray:
    """(n, 2) x, y on a jittered grid at least `margin` px from the edges."""
    height, width = shape
    columns = int(np.ceil(np.sqrt(n * (width - 2 * margin) / (height - 2 * margin))))
    rows = int(np.ceil(n / columns))
    gx = np.linspace(margin, width - margin, columns)
    gy = np.linspace(margin, height - margin, rows)
    grid = np.array([(x, y) for y in gy for x in gx])[:n]
    return grid + rng.uniform(-5, 5, grid.shape)


def model_stamp(psf: Psf, x: float, y: float) -> np.ndarray:
    """The psField model at (x, y), unit sum, on its own (31 x 31) grid centred on pixel (floor(x+.5), floor(y+.5))."""
    stamp = psf.compute_image(float(x), float(y))
    return stamp / stamp.sum()


def _circle(radius: int, fx: float, fy: float) -> np.ndarray:
    """(2r+1)^2 mask of the pixels whose centres lie within `radius` of (r + fx, r + fy)."""
    yy, xx = np.mgrid[-radius:radius + 1, -radius:radius + 1]
    return (xx - fx) ** 2 + (yy - fy) ** 2 <= radius**2


def _padded(stamp: np.ndarray, radius: int) -> np.ndarray:
    half = stamp.shape[0] // 2
    out = np.zeros((2 * radius + 1, 2 * radius + 1))
    out[radius - half:radius + half + 1, radius - half:radius + half + 1] = stamp
    return out


@dataclass(frozen=True)
class EmpiricalPsf:
    """The psField model plus the mean residual of the frame's real stars (see the module docstring)."""

    psf: Psf
    residual: np.ndarray  # (2R+1)^2, per unit flux, centred on the central pixel
    n_stars: int
    radius: int = STAMP_RADIUS

    def stamp(self, x: float, y: float) -> np.ndarray:
        """Unit-sum (2R+1)^2 stamp of a star at (x, y), centred on pixel (floor(x+.5), floor(y+.5))."""
        fx, fy = x - np.floor(x + 0.5), y - np.floor(y + 0.5)
        stamp = _padded(model_stamp(self.psf, x, y), self.radius) + shift_image(self.residual, fx, fy)
        stamp[~_circle(self.radius, fx, fy)] = 0.0
        return stamp / stamp.sum()


def build_empirical_psf(exposure: Exposure, star_x: np.ndarray, star_y: np.ndarray, source_x: np.ndarray,
                        source_y: np.ndarray, radius: int = STAMP_RADIUS) -> EmpiricalPsf:
    """Stack (star - F x model) of the stars at (star_x, star_y) on the background-subtracted `exposure`, F = the
    star's sum within `radius`; stars with an excluded mask plane or another source (source_x, source_y) within
    `radius` are skipped."""
    excluded = sum(mask_bit(plane) for plane in EXCLUDED_PLANES)
    height, width = exposure.shape
    tree = cKDTree(np.column_stack([source_x, source_y]))
    total = np.zeros((2 * radius + 1, 2 * radius + 1))
    flux_sum, n_stars = 0.0, 0
    for x, y in zip(star_x, star_y, strict=True):
        cx, cy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        if cx - radius < 0 or cy - radius < 0 or cx + radius >= width or cy + radius >= height:
            continue
        window = np.s_[cy - radius:cy + radius + 1, cx - radius:cx + radius + 1]
        if np.any(exposure.mask[window] & excluded) or len(tree.query_ball_point((x, y), radius)) > 1:
            continue
        fx, fy = x - cx, y - cy
        circle = _circle(radius, fx, fy)
        stamp = np.where(circle, exposure.image[window].astype(np.float64), 0.0)
        flux = float(stamp.sum())
        if not flux > 0:
            continue
        residual = stamp - flux * np.where(circle, _padded(model_stamp(exposure.psf, x, y), radius), 0.0)
        total += shift_image(residual, -fx, -fy)
        flux_sum += flux
        n_stars += 1
    return EmpiricalPsf(exposure.psf, total / flux_sum if n_stars else total, n_stars, radius)


def light_beyond(stamp: np.ndarray, radii: tuple[float, ...] = (7.0, 12.0)) -> list[float]:
    """Fraction of a centred stamp's sum outside circles of `radii` (exact pixel overlap, sep.sum_circle)."""
    import sep

    data = np.ascontiguousarray(stamp, dtype=np.float64)
    c = stamp.shape[0] // 2
    inside = [sep.sum_circle(data, [float(c)], [float(c)], r, subpix=0)[0][0] for r in radii]
    return [1.0 - float(value) / float(stamp.sum()) for value in inside]


def light_within(stamp: np.ndarray, x: float, y: float, radius: float) -> float:
    """Fraction of the sum of `stamp` (a star at (x, y), centred on pixel (floor(x+.5), floor(y+.5))) within
    `radius` of its centre (exact overlap, sep.sum_circle)."""
    import sep

    half = stamp.shape[0] // 2
    centre_x, centre_y = half + x - np.floor(x + 0.5), half + y - np.floor(y + 0.5)
    data = np.ascontiguousarray(stamp, dtype=np.float64)
    return float(sep.sum_circle(data, [centre_x], [centre_y], radius, subpix=0)[0][0]) / float(stamp.sum())


def inject(image: np.ndarray, stamp_at: Callable[[float, float], np.ndarray], positions: np.ndarray,
           fluxes: np.ndarray) -> None:
    """Add stars of unit-sum stamps `stamp_at(x, y)` (centred on pixel (floor(x+.5), floor(y+.5))) times `fluxes`
    (in place)."""
    for (x, y), flux in zip(positions, fluxes, strict=True):
        stamp = stamp_at(float(x), float(y))
        half = stamp.shape[0] // 2
        cx, cy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        y0, y1, x0, x1 = cy - half, cy + half + 1, cx - half, cx + half + 1
        sy0, sx0 = max(0, -y0), max(0, -x0)
        y0, x0 = max(y0, 0), max(x0, 0)
        y1, x1 = min(y1, image.shape[0]), min(x1, image.shape[1])
        image[y0:y1, x0:x1] += (flux * stamp)[sy0:sy0 + y1 - y0, sx0:sx0 + x1 - x0].astype(image.dtype)


_EMPIRICAL: dict[str, EmpiricalPsf] = {}


def empirical_psf(data_id: DataId) -> EmpiricalPsf:
    """The frame's EmpiricalPsf (cached): from the default configuration's calibration stage (its aperture-
    correction stars on E2), isolation judged against its final-stage sources; the same for both configurations."""
    label = data_id.label()
    if label not in _EMPIRICAL:
        config = load_config([])
        with tempfile.TemporaryDirectory() as output:
            task = ProcessCcdTask(Butler(ROOT / "input", output), config)
            exposure = make_exposure(task.butler, data_id, config.exposure)
            calib = task.calibrate_stage(exposure)
            e2 = Exposure(exposure.image.copy(), exposure.mask.copy(), exposure.variance, exposure.wcs, exposure.psf,
                          exposure.photo_calib, exposure.data_id)
            final = task.final_stage(exposure, calib.n_sources + 1)
        stars = calib.calibration.ap_corr.stars
        cols = final.columns
        good = np.isfinite(cols["centroid.sdss.x"]) & np.isfinite(cols["centroid.sdss.y"])
        _EMPIRICAL[label] = build_empirical_psf(e2, stars.x, stars.y, cols["centroid.sdss.x"][good],
                                                cols["centroid.sdss.y"][good])
    return _EMPIRICAL[label]


TRUTHS = {"total": None, "r12": 12.0, "r7": 7.0}  # the known flux: the whole stamp, or its light within 12 / 7 px


def measure_frame_truths(data_id: DataId, config_files: list[Path], n_stars: int, seed: int,
                         column: str = "flux.psf", injection: str = "model") -> dict[str, np.ndarray]:
    """`column` (flux.psf) / known flux of the usable injected stars of one frame, for each of TRUTHS: the
    injected flux (the unit-sum stamp's sum times the flux), or the injected star's light within 12 or 7 px of
    its centre (exact overlap). `injection`: "model" (the psField PSF) or "empirical" (EmpiricalPsf)."""
    config = load_config(config_files)
    with tempfile.TemporaryDirectory() as output:
        task = ProcessCcdTask(Butler(ROOT / "input", output), config)
        exposure = make_exposure(task.butler, data_id, config.exposure)
        rng = np.random.default_rng(seed)
        positions = injected_positions(exposure.shape, n_stars, rng)
        sky_sigma = float(np.sqrt(np.median(exposure.variance)))
        psf_sigma = task.psf_sigma(exposure)
        noise_per_flux = sky_sigma * np.sqrt(4 * np.pi * psf_sigma**2)
        fluxes = noise_per_flux * np.exp(rng.uniform(np.log(50), np.log(500), n_stars))
        if injection == "empirical":
            stamp_at = empirical_psf(data_id).stamp
        else:
            def stamp_at(x: float, y: float) -> np.ndarray:
                return model_stamp(exposure.psf, x, y)
        inject(exposure.image, stamp_at, positions, fluxes)
        inside = {name: np.array([light_within(stamp_at(x, y), x, y, radius) for x, y in positions])
                  for name, radius in TRUTHS.items() if radius is not None}
        calib = task.calibrate_stage(exposure)
        final = task.final_stage(exposure, calib.n_sources + 1, calib.calibration.ap_corr, calib)
    cols = final.columns
    x, y = cols["centroid.sdss.x"], cols["centroid.sdss.y"]
    good = np.isfinite(x) & np.isfinite(y)
    xy = np.column_stack([np.where(good, x, -1e6), np.where(good, y, -1e6)])
    tree = cKDTree(xy)
    distance, index = tree.query(positions)
    neighbours = np.array([len(found) for found in tree.query_ball_point(positions, 10.0)])
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = cols["flux.psf"] / cols["flux.psf.err"]
    usable = (distance < 0.5) & (neighbours == 1) & (snr[index] > 50)
    if "deblend.nchild" in cols:
        usable &= (cols["deblend.nchild"][index] == 0) & (cols["parent"][index] == 0)
    measured = cols[column][index[usable]]
    return {name: measured / (fluxes[usable] * (1.0 if radius is None else inside[name][usable]))
            for name, radius in TRUTHS.items()}


def measure_frame(data_id: DataId, config_files: list[Path], n_stars: int, seed: int, column: str = "flux.psf",
                  injection: str = "model", truth: str = "total") -> np.ndarray:
    """`column` / known flux (TRUTHS[truth]) of the usable injected stars of one frame."""
    return measure_frame_truths(data_id, config_files, n_stars, seed, column, injection)[truth]


def robust(values: np.ndarray) -> tuple[float, float]:
    median = float(np.median(values))
    return median, float(1.4826 * np.median(np.abs(values - median)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=len(benchmark.FRAMES))
    parser.add_argument("--stars", type=int, default=150)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--injection", choices=("model", "empirical", "both"), default="both")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    injections = ("model", "empirical") if args.injection == "both" else (args.injection,)
    frames = benchmark.FRAMES[: args.frames]
    results: dict[str, dict] = {}
    if "empirical" in injections:
        for data_id in frames:
            psf = empirical_psf(data_id)
            beyond_7, beyond_12 = light_beyond(psf.stamp(1024.0, 680.0))
            model_7, model_12 = light_beyond(_padded(model_stamp(psf.psf, 1024.0, 680.0), psf.radius))
            results.setdefault("empirical_psf", {})[data_id.label()] = {
                "n_stars": psf.n_stars, "beyond_7": beyond_7, "beyond_12": beyond_12, "model_beyond_7": model_7,
                "model_beyond_12": model_12}
            print(f"empirical PSF {data_id.label():<12} {psf.n_stars:3d} stars; light beyond 7 / 12 px (of the light "
                  f"within {psf.radius} px, frame centre): {100 * beyond_7:.2f} / {100 * beyond_12:.2f} % "
                  f"(psField model: {100 * model_7:.2f} / {100 * model_12:.2f} %)")
    for injection in injections:
        for label, files in (("default", []), ("lsst2020", [PROFILE])):
            key = f"{injection}/{label}"
            pooled: dict[str, list[np.ndarray]] = {name: [] for name in TRUTHS}
            for data_id in [*frames, None]:
                if data_id is None:
                    ratios, name_of = {name: np.concatenate(values) for name, values in pooled.items()}, "all"
                else:
                    ratios, name_of = measure_frame_truths(data_id, files, args.stars, args.seed,
                                                           injection=injection), data_id.label()
                    for name, values in ratios.items():
                        pooled[name].append(values)
                entry = {"n": len(ratios["total"])}
                for name, values in ratios.items():
                    median, scatter = robust(values) if len(values) else (np.nan, np.nan)
                    entry[f"bias_{name}"], entry[f"scatter_{name}"] = median - 1, scatter
                results.setdefault(key, {})[name_of] = entry
                print(f"{injection:<9} {label:<9} {name_of:<12} n={entry['n']:4d}  "
                      f"bias {100 * entry['bias_total']:+.3f} %  scatter {100 * entry['scatter_total']:.3f} %   "
                      f"vs the light within 12 px "
                      f"{100 * entry['bias_r12']:+.3f} %, 7 px {100 * entry['bias_r7']:+.3f} %")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
