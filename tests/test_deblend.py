"""Deblending (photutils) in MeasurementTask: children of blends, ids, parents, noise replacement of children."""

from __future__ import annotations

import numpy as np
import pytest

from processccd.detection import DetectionConfig, detect_sources
from processccd.meas.noise_replacement import NoiseReplacer
from processccd.meas.shape import psf_adaptive_sigma
from processccd.tasks.measurement import SEQUENCE_BITS, MeasurementConfig, MeasurementTask
from reference_impl.psf import GaussianPsf
from test_measurement import SIGMA, tan_wcs

FWHM = 2.3548 * SIGMA


def scene(stars: list[tuple[float, float, float]], seed: int = 4, size: tuple[int, int] = (120, 160)):
    from processccd.dataid import DataId
    from processccd.image import Exposure, PhotoCalib

    psf = GaussianPsf(SIGMA)
    image = np.random.default_rng(seed).normal(0.0, 5.0, size)
    for x, y, flux in stars:
        stamp = psf.compute_image(x, y)
        half = stamp.shape[0] // 2
        cx, cy = int(np.floor(x + 0.5)), int(np.floor(y + 0.5))
        image[cy - half:cy + half + 1, cx - half:cx + half + 1] += flux * stamp / stamp.sum()
    return Exposure(image=image.astype(np.float32), mask=np.zeros(size, np.uint16),
                    variance=np.full(size, 25.0, np.float32), wcs=tan_wcs(size[1], size[0]), psf=psf,
                    photo_calib=PhotoCalib(1e11, 1e8), data_id=DataId(run=1, camcol=1, field=1, filter="r", rerun=1))


def measure(exposure, **options):
    sigma = psf_adaptive_sigma(exposure.psf.compute_image(60, 60))
    detection = detect_sources(exposure.image, exposure.mask, sigma, DetectionConfig(re_estimate_background=False))
    config = MeasurementConfig(model_fluxes=False, deblend=True, **options)
    return MeasurementTask(config).run(exposure, detection.footprints, 7, "test", detection.threshold, sigma)


def test_a_blend_becomes_a_parent_with_two_children_and_a_lone_star_has_none():
    # two stars 2 FWHM apart (one footprint) and a lone one; S/N ~ 6000 / (5 sqrt(4 pi 1.4^2)) = 240
    stars = [(60.2, 50.3, 6000.0), (60.2 + 2 * FWHM, 51.0, 3000.0), (120.4, 80.6, 4000.0)]
    cols = measure(scene(stars))
    base = np.int64(1) << SEQUENCE_BITS  # exposure id 1 (run 1, filter r... as tan_wcs' exposure): recomputed
    ids = cols["id"]
    assert len(ids) == 4  # 2 parents (the blend, the lone star) + 2 children
    np.testing.assert_array_equal(np.diff(ids), 1)  # the children continue the frame's sequence
    assert (ids[0] & (base - 1)) == 7
    parents = cols["parent"] == 0
    assert parents.sum() == 2
    blend = int(np.flatnonzero(cols["deblend.nchild"] == 2)[0])
    assert cols["deblend.nchild"][parents].tolist().count(0) == 1  # the lone star: no child
    children = np.flatnonzero(~parents)
    assert (children > np.flatnonzero(parents).max()).all()  # children after the parents
    np.testing.assert_array_equal(cols["parent"][children], ids[blend])
    for x, y, flux in stars[:2]:
        d = np.hypot(cols["centroid.sdss.x"][children] - x, cols["centroid.sdss.y"][children] - y)
        child = children[np.argmin(d)]
        assert d.min() < 0.1
        # measured on its own pixels with the other child replaced by noise: its flux, not the blend's
        assert cols["flux.psf"][child] == pytest.approx(flux, rel=0.02)
    # the parent is measured on the whole footprint: its centroid between the two stars' light, near the brighter
    assert cols["footprint.npix"][blend] == cols["footprint.npix"][children].sum()


def test_children_fluxes_match_the_stars_measured_alone():
    """Each child's flux.psf equals that of its star alone on the same noise within the issue's 2 % (1.6 FWHM
    apart, the brighter child takes ~1 % of its neighbour's light through the watershed boundary)."""
    pair = [(70.3, 60.2, 5000.0), (70.3 + 1.6 * FWHM, 60.9, 2500.0)]
    blended = measure(scene(pair))
    children = np.flatnonzero(blended["parent"] != 0)
    assert len(children) == 2
    for star in pair:
        alone = measure(scene([star]))
        d = np.hypot(blended["centroid.sdss.x"][children] - star[0], blended["centroid.sdss.y"][children] - star[1])
        child = children[np.argmin(d)]
        assert blended["flux.psf"][child] == pytest.approx(alone["flux.psf"][0], rel=0.02)


def test_extended_replacer_inserts_a_child_on_the_noised_parent():
    image = np.arange(48, dtype=np.float32).reshape(6, 8) + 100.0
    original = image.copy()
    ys, xs = np.nonzero(np.ones((2, 5), bool))
    ys, xs = ys + 2, xs + 1  # a 2x5 footprint
    replacer = NoiseReplacer(image, np.zeros(len(ys), int), ys, xs, seed=3)
    noised = image.copy()
    left = xs < 3
    extended = replacer.extended(np.zeros(int(left.sum()), int), ys[left], xs[left])
    assert extended.n_footprints == 2
    extended.insert(1)  # the child: only its pixels come back
    np.testing.assert_array_equal(image[ys[left], xs[left]], original[ys[left], xs[left]])
    np.testing.assert_array_equal(image[ys[~left], xs[~left]], noised[ys[~left], xs[~left]])
    extended.remove(1)
    np.testing.assert_array_equal(image, noised)
    source, _, _, deltas = extended.footprint_deltas()
    np.testing.assert_allclose(deltas[source == 1], original[ys[left], xs[left]] - noised[ys[left], xs[left]])
    with pytest.raises(ValueError, match="pixels of the existing footprints"):
        replacer.extended(np.zeros(1, int), np.array([0]), np.array([0]))


def footprint_scene(quantum: float) -> tuple[np.ndarray, np.ndarray]:
    """Twelve disc footprints (labels 1..12) on a smooth image: one or two Gaussian bumps 0-6 px apart with
    flux ratios 1-8, weak noise, 1-pixel spikes, and one footprint of two separate discs. `quantum` > 0
    rounds the values (plateaus, ties)."""
    rng = np.random.default_rng(8)
    yy, xx = np.mgrid[:90, :120]
    image = rng.normal(0.0, 0.01, yy.shape)
    image[15, 20:120:30] += 30.0  # spikes 5 px from the centres of the first row
    labels = np.zeros(yy.shape, np.int64)
    for k in range(12):
        cx, cy = 15.0 + 30.0 * (k % 4), 15.0 + 30.0 * (k // 4)
        labels[np.hypot(xx - cx, yy - cy) < 11] = k + 1
        separation, ratio = (0.0, 1.5, 2.5, 3.5, 4.5, 6.0)[k % 6], (1.0, 3.0, 8.0)[k % 3]
        for dx, flux in ((-separation / 2, 100.0), (separation / 2, 100.0 / ratio)):
            image += flux * np.exp(-0.5 * ((xx - cx - dx) ** 2 + (yy - cy) ** 2) / 1.4**2)
    labels[(labels == 12) & (np.abs(xx - 105) < 2)] = 0  # footprint 12 in two pieces
    if quantum > 0:
        image = np.round(image / quantum) * quantum
    return image.astype(np.float32), labels


def brute_force_split_possible(image: np.ndarray, labels: np.ndarray, min_pixels: int) -> np.ndarray:
    """The definition, level by level: some t leaves two 8-connected components of >= min_pixels pixels > t."""
    from scipy import ndimage

    result = []
    for label in range(1, labels.max() + 1):
        inside = labels == label
        found = False
        for t in np.unique(image[inside]):
            components, _ = ndimage.label(inside & (image > t), structure=np.ones((3, 3)))
            found |= int(np.sum(np.bincount(components.ravel())[1:] >= min_pixels)) >= 2
        result.append(found or _at_lowest(inside, min_pixels))
    return np.array(result)


def _at_lowest(inside: np.ndarray, min_pixels: int) -> bool:
    from scipy import ndimage

    components, _ = ndimage.label(inside, structure=np.ones((3, 3)))
    return int(np.sum(np.bincount(components.ravel())[1:] >= min_pixels)) >= 2


@pytest.mark.filterwarnings("ignore:The deblending mode")  # photutils: exponential -> linear for footprints <= 0
@pytest.mark.parametrize("quantum", [0.0, 2.0])
def test_split_possible_is_the_multithreshold_condition_and_holds_every_photutils_split(quantum):
    from photutils.segmentation import SegmentationImage, deblend_sources

    from processccd.pixel_kernels import split_possible

    image, labels = footprint_scene(quantum)
    ys, xs = np.nonzero(labels)
    possible = split_possible(ys, xs, image[ys, xs], labels[ys, xs] - 1, 12, image.shape, 5)
    np.testing.assert_array_equal(possible, brute_force_split_possible(image, labels, 5))
    assert 0 < possible.sum() < 12
    deblended = deblend_sources(image, SegmentationImage(labels), 5, n_levels=32, contrast=0.005,
                                mode="exponential", relabel=False, progress_bar=False).data
    split = np.array([len(np.unique(deblended[labels == k + 1])) >= 2 for k in range(12)])
    assert split.any()
    assert not (split & ~possible).any()  # photutils splits no footprint that split_possible rules out
