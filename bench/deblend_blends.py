"""Benchmark (not a test): sep's multi-threshold deblending against photutils.segmentation.deblend_sources.

    .venv/bin/python bench/deblend_blends.py [--pairs 200] [--seed 12] [--json FILE]

Synthetic blends: two stars of the PSF model (Gaussian, sigma 1.4 px, FWHM 3.30 px; `Psf.compute_image`,
unit sum) at 1.5-4 FWHM apart (uniform, random direction), the fainter at S/N 20-200 (log-uniform), flux
ratio 1-5 (log-uniform), on white noise of sd 10 DN (S/N = F / (10 sqrt(4 pi sigma^2))). Each pair goes
through the pipeline's detection (5 sigma), then the segmentation under test (the same detection footprints
and threshold, 32 levels, contrast 0.005 for both), then MeasurementTask (deblend on: children measured on
their own pixels, everything else noise). A pair is recovered when each star has its own child whose
centroid.sdss is within 1 px of the truth (a pair detected as two footprints counts as recovered, not as
children); flux bias = median over recovered stars of child flux.psf / the
flux.psf of the same star measured alone on the same noise, - 1; the stars measured alone also count the
single stars split by mistake. Also the CPU time per pair.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from astropy.wcs import WCS

import processccd.tasks.measurement as measurement_module
from processccd.dataid import DataId
from processccd.deblend import Segmentation, _child_footprints, segment_footprints
from processccd.detection import DetectionConfig, detect_sources, gaussian_kernel_1d
from processccd.image import Exposure, PhotoCalib
from processccd.meas.shape import psf_adaptive_sigma
from processccd.tasks.measurement import MeasurementConfig, MeasurementTask

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the Gaussian PSF of the tests
from reference_impl.psf import GaussianPsf  # noqa: E402

SIGMA, SKY, SIZE = 1.4, 10.0, 81
FWHM = 2.3548 * SIGMA


def sep_segment(image: np.ndarray, footprints, threshold: float, psf_sigma: float, deblend: bool,
                nlevels: int = 32, contrast: float = 0.005, smoothing: float = 0.0) -> Segmentation:
    """The interface of processccd.deblend.segment_footprints with sep's multi-threshold deblending instead:
    sep.extract of the image filtered as detection smooths it (sep deblends the filtered image it detects
    on; given a segmentation map it does not deblend), at the detection threshold; a footprint holding two
    or more sep objects is split into them."""
    import sep

    n = len(footprints)
    half = int(np.ceil(3.0 * psf_sigma))
    taps = gaussian_kernel_1d(psf_sigma, 2 * half + 1)
    objects, segmap = sep.extract(np.ascontiguousarray(image, dtype=np.float32), float(threshold),
                                  filter_kernel=np.outer(taps, taps), filter_type="conv", minarea=1,
                                  deblend_nthresh=nlevels, deblend_cont=contrast, clean=False, segmentation_map=True)
    source, ys, xs = footprints.all_pixels()
    label = segmap[ys, xs].astype(np.int64)
    pairs = np.unique(np.column_stack([source, label])[label > 0], axis=0)
    split = np.bincount(pairs[:, 0], minlength=n) >= 2
    child_pairs = pairs[split[pairs[:, 0]]]
    children = _child_footprints(image, source, ys, xs, label, child_pairs[:, 0], child_pairs[:, 1])
    return Segmentation(children, child_pairs[:, 0].astype(np.int64), np.full((n + len(child_pairs), 3), np.nan))


def exposure_of(image: np.ndarray) -> Exposure:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [10.0, 0.0]
    wcs.wcs.cd = [[0.396 / 3600, 0], [0, 0.396 / 3600]]
    return Exposure(image=image.astype(np.float32), mask=np.zeros(image.shape, np.uint16),
                    variance=np.full(image.shape, SKY**2, np.float32), wcs=wcs, psf=GaussianPsf(SIGMA),
                    photo_calib=PhotoCalib(1e10, 1e8), data_id=DataId(run=1, camcol=1, field=1, filter="r", rerun=1))


def star(psf: GaussianPsf, x: float, y: float, flux: float) -> np.ndarray:
    image = np.zeros((SIZE, SIZE))
    stamp = psf.compute_image(x, y)
    half = stamp.shape[0] // 2
    cx, cy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
    image[cy - half:cy + half + 1, cx - half:cx + half + 1] = flux * stamp / stamp.sum()
    return image


def measure(image: np.ndarray) -> dict[str, np.ndarray]:
    exposure = exposure_of(image)
    psf_sigma = psf_adaptive_sigma(exposure.psf.compute_image(SIZE / 2, SIZE / 2))
    detection = detect_sources(exposure.image, exposure.mask, psf_sigma, DetectionConfig(re_estimate_background=False))
    config = MeasurementConfig(model_fluxes=False, deblend=True)
    return MeasurementTask(config).run(exposure, detection.footprints, 1, "bench", detection.threshold, psf_sigma)


def run(method: str, pairs: list[dict], debug: bool = False) -> dict:
    measurement_module.segment_footprints = segment_footprints if method == "photutils" else sep_segment
    psf = GaussianPsf(SIGMA)
    recovered, recovered_blended, n_blended, ratios, cpu, singles, false_splits = 0, 0, 0, [], 0.0, 0, 0
    for pair in pairs:
        stars = [star(psf, x, y, f) for x, y, f in pair["stars"]]
        start = time.process_time()
        cols = measure(stars[0] + stars[1] + pair["noise"])
        cpu += time.process_time() - start
        children = np.flatnonzero(cols["parent"] != 0)
        blended = int(np.sum(cols["parent"] == 0)) == 1  # one footprint holds both stars
        n_blended += blended
        if not blended:  # two footprints: each star is its own source, no deblending needed
            children = np.flatnonzero(cols["deblend.nchild"] == 0)
        used, ok = set(), True
        found = []
        for x, y, _ in pair["stars"]:
            d = np.hypot(cols["centroid.sdss.x"][children] - x, cols["centroid.sdss.y"][children] - y)
            best = int(np.argmin(d)) if len(d) else -1
            if best < 0 or d[best] > 1.0 or best in used:
                ok = False
                break
            used.add(best)
            found.append(children[best])
        if not ok:
            if debug:
                print(f"  missed: separation {pair['separation'] / FWHM:.2f} FWHM, fluxes "
                      f"{pair['stars'][0][2]:.0f} {pair['stars'][1][2]:.0f}, {len(cols['id'])} rows, "
                      f"{len(children)} children")
            continue
        recovered += 1
        recovered_blended += blended
        for (x, y, _), row, alone_image in zip(pair["stars"], found, stars, strict=True):
            alone = measure(alone_image + pair["noise"])
            singles += 1
            false_splits += int(np.any(alone["deblend.nchild"] > 0))
            k = int(np.argmin(np.hypot(alone["centroid.sdss.x"] - x, alone["centroid.sdss.y"] - y)))
            ratios.append(cols["flux.psf"][row] / alone["flux.psf"][k])
    ratios = np.array(ratios)
    return {"method": method, "pairs": len(pairs), "recovered": recovered, "fraction": recovered / len(pairs),
            "blended": n_blended, "recovered_blended": recovered_blended,
            "flux_bias_median": float(np.median(ratios) - 1) if len(ratios) else None,
            "flux_ratio_scatter": float(1.4826 * np.median(np.abs(ratios - np.median(ratios)))) if len(ratios)
            else None, "single_stars": singles, "single_stars_split": false_splits,
            "cpu_seconds_per_pair": cpu / len(pairs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--debug", action="store_true", help="print the pairs missed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rng = np.random.default_rng(args.seed)
    pairs = []
    noise_per_flux = SKY * np.sqrt(4 * np.pi * SIGMA**2)
    for _ in range(args.pairs):
        separation = rng.uniform(1.5, 4.0) * FWHM
        angle = rng.uniform(0, np.pi)
        faint = noise_per_flux * np.exp(rng.uniform(np.log(20), np.log(200)))
        bright = faint * np.exp(rng.uniform(0, np.log(5)))
        cx, cy = SIZE / 2 + rng.uniform(-0.5, 0.5), SIZE / 2 + rng.uniform(-0.5, 0.5)
        dx, dy = 0.5 * separation * np.cos(angle), 0.5 * separation * np.sin(angle)
        pairs.append({"stars": [(cx - dx, cy - dy, bright), (cx + dx, cy + dy, faint)], "separation": separation,
                      "noise": rng.normal(0, SKY, (SIZE, SIZE))})
    results = [run(method, pairs, args.debug) for method in ("sep", "photutils")]
    for r in results:
        print(f"{r['method']:<10} recovered {r['recovered']}/{r['pairs']} ({100 * r['fraction']:.1f} %; "
              f"as children: {r['recovered_blended']} of the {r['blended']} pairs in one footprint), "
              f"flux bias {100 * r['flux_bias_median']:+.2f} %, scatter {100 * r['flux_ratio_scatter']:.2f} %, "
              f"{1000 * r['cpu_seconds_per_pair']:.1f} ms CPU per pair (detection + segmentation + measurement); "
              f"single stars split: {r['single_stars_split']} of {r['single_stars']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
