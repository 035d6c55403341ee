"""MeasurementTask: run the measurement algorithms on every footprint (measurement-spec.md §3)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from processccd.deblend import concatenate, segment_footprints
from processccd.detection import Footprints
from processccd.image import Exposure
from processccd.meas.aperture_flux import SINC_SIZE, shifted_sinc_coefficients_many, sinc_flux_of_stamps
from processccd.meas.centroid import gaussian_centroid, gaussian_centroid_sources, sdss_centroid_sources
from processccd.meas.circular_aperture import circular_aperture_fluxes
from processccd.meas.gaussian_flux import (
    gaussian_flux_from_batch,
    gaussian_flux_from_moments,
    gaussian_flux_psf_factor_batch,
)
from processccd.meas.kron_flux import kron_fluxes
from processccd.meas.model_flux import (
    ModelFluxConfig,
    ModelFluxResult,
    PsfModel,
    PsfModelCache,
    combo_psf_factor,
    fit_psf_model,
    model_fluxes,
)
from processccd.meas.noise_replacement import NoiseReplacer, python27_dict_order
from processccd.meas.pixel_flags import pixel_flags_many
from processccd.meas.psf_flux import nearest_pixel, psf_flux_of_stamps, stamp_indices, take_stamps
from processccd.meas.shape import adaptive_moments, adaptive_moments_sources, psf_adaptive_sigma_batch
from processccd.psf import Psf
from processccd.table import (
    DEBLEND_SCHEMA,
    EXTRA_SCHEMA,
    KRON_SCHEMA,
    SOURCE_SCHEMA,
    Column,
    circular_aperture_prefix,
    circular_aperture_schema,
    empty_columns,
)

SEQUENCE_BITS = 26  # source id = exposure id << 26 | sequence number


@dataclass
class MeasurementConfig:
    """Measurement settings (2013 defaults)."""

    replace_with_noise: bool = True  # measure each source with the other footprints replaced by noise
    noise_seed: int = 1  # seed of the noise generator (GSL mt19937 + ziggurat Gaussian, as 2013)
    sinc_radius: float = 7.0  # flux.sinc aperture radius [pixels]
    shape_shiftmax: float = 2.0  # shape.sdss: largest allowed centroid shift of the weighted moments
    gaussian_flux_shiftmax: float = 10.0  # flux.gaussian.flags: set when its moments' centroid shifted more
    model_fluxes: bool = True  # multishapelet exp / dev / combo fluxes (2013: final stage only)
    model_flux: ModelFluxConfig = field(default_factory=ModelFluxConfig)
    # --- LSST-2020 profile (configs/processCcd-lsst2020.yaml); each off by default ---
    circular_aperture_radii: tuple[float, ...] = field(default=(), metadata={"doc": (
        "circular aperture fluxes flux.circular.<r> at these radii [px] (sep.sum_circle, exact overlap; "
        "LSST 2020: 3, 4.5, 6, 9, 12, 17, 25, 35, 50, 70); empty = off (2013)")})
    kron_flux: bool = field(default=False, metadata={"doc": (
        "flux.kron: SExtractor AUTO flux with sep (Kron factor 2.5, minimum radius 3.5, ellipse = the "
        "isophotal moments of sep.extract, as SExtractor's); false = off (2013)")})
    deblend: bool = field(default=False, metadata={"doc": (
        "split multi-peak footprints into children (photutils deblend_sources: multi-threshold + watershed), "
        "measured on their own pixels with every other source noise; columns parent, deblend.nchild; "
        "false = off (2013)")})
    deblend_nlevels: int = field(default=32, metadata={"doc": "deblend: photutils multi-threshold levels"})
    deblend_contrast: float = field(default=0.005, metadata={"doc": (
        "deblend: smallest flux fraction of a child (photutils contrast; SExtractor DEBLEND_MINCONT)")})
    deblend_smoothing: float = field(default=0.5, metadata={"doc": (
        "deblend: the image deblended is smoothed by this x the PSF sigma (detection smooths by 1: too much "
        "to split stars 1.5-2 FWHM apart; 0 = unsmoothed)")})


def measurement_schema(config: MeasurementConfig) -> list[Column]:
    """The columns MeasurementTask fills with `config`: the 2013 ones, then those of the options turned on."""
    schema = SOURCE_SCHEMA + EXTRA_SCHEMA + circular_aperture_schema(config.circular_aperture_radii)
    return schema + (KRON_SCHEMA if config.kron_flux else []) + (DEBLEND_SCHEMA if config.deblend else [])


@contextmanager
def isolated(replacer: NoiseReplacer | None, i: int) -> Iterator[None]:
    """Within the block, source i's own pixels are in the image and every other footprint is noise."""
    if replacer is None:
        yield
        return
    replacer.insert(i)
    try:
        yield
    finally:
        replacer.remove(i)


def own_footprint_stamps(image: np.ndarray, replacer: NoiseReplacer | None, x: np.ndarray, y: np.ndarray,
                         half: int) -> tuple[np.ndarray, np.ndarray]:
    """Stamps (N, 2 half + 1, 2 half + 1) centred on (round(x), round(y)) of the image each source is measured on.

    `image` has every footprint replaced by noise (or none, without a replacer); each source's own
    footprint's (original - noise) is added back into its stamp. Returns (stamps, inside the image).
    """
    flat_index, inside = stamp_indices(image.shape, x, y, half)
    data = take_stamps(image, flat_index, inside)
    if replacer is not None:
        source, ys, xs, delta = replacer.footprint_deltas()
        dy = ys - nearest_pixel(y)[source] + half
        dx = xs - nearest_pixel(x)[source] + half
        size = 2 * half + 1
        own = (dx >= 0) & (dx < size) & (dy >= 0) & (dy < size)
        np.add.at(data, (source[own], dy[own], dx[own]), delta[own])
    return data, inside


class MeasurementTask:
    """Measures sources on an exposure; returns columns of the source schema."""

    def __init__(self, config: MeasurementConfig | None = None) -> None:
        self.config = config or MeasurementConfig()
        self.timings: dict[str, float] = {}  # CPU seconds per measurement step, summed over runs

    @contextmanager
    def _timed(self, step: str) -> Iterator[None]:
        start = time.process_time()
        try:
            yield
        finally:
            self.timings[step] = self.timings.get(step, 0.0) + time.process_time() - start

    def run(self, exposure: Exposure, footprints: Footprints, first_sequence: int,
            logger_name: str = "processCcd.measurement", threshold: float | None = None,
            psf_sigma: float | None = None) -> dict[str, np.ndarray]:
        """Measure the footprints (and, with `deblend`, their children, appended after them).

        `threshold` (DN on the smoothed image) and `psf_sigma` (the smoothing width) of the detection are
        needed by the sep segmentation (deblend, kron_flux)."""
        log = logging.getLogger(logger_name)
        config = self.config
        timed = self._timed
        n_parents = len(footprints)
        segmentation = None
        if (config.deblend or config.kron_flux) and n_parents:
            if threshold is None or psf_sigma is None:
                raise ValueError("deblend and kron_flux need the detection threshold and PSF width")
            with timed("deblend"):
                segmentation = segment_footprints(exposure.image, footprints, threshold, psf_sigma, config.deblend,
                                                  config.deblend_nlevels, config.deblend_contrast,
                                                  config.deblend_smoothing)
            if config.deblend:
                footprints = concatenate(footprints, segmentation.children)
                log.info("Deblended %d footprints into %d children", int(np.sum(segmentation.n_children > 0)),
                         len(segmentation.child_parent))
        n = len(footprints)
        log.info("Measuring %d sources", n)
        cols = empty_columns(n, measurement_schema(config))
        cols["id"] = (np.int64(exposure.exposure_id) << SEQUENCE_BITS) + first_sequence + np.arange(n)
        if n == 0:
            return cols
        if config.deblend:
            cols["parent"][n_parents:] = cols["id"][segmentation.child_parent]
            cols["deblend.nchild"][:n_parents] = segmentation.n_children
        cols["peak.x"] = footprints.peak_x
        cols["peak.y"] = footprints.peak_y
        source_index, ys, xs = footprints.all_pixels()
        cols["footprint.npix"] = np.bincount(source_index, minlength=n)

        image = exposure.image.copy()
        variance, psf = exposure.variance, exposure.psf
        replacer = None
        with timed("noise replacement"):
            if config.replace_with_noise:
                # 2013 drew the noise footprint by footprint in the order of a Python 2 dict keyed by source id
                parent_pixels = slice(0, int(footprints.pixel_offsets[n_parents]))
                replacer = NoiseReplacer(image, source_index[parent_pixels], ys[parent_pixels], xs[parent_pixels],
                                         seed=config.noise_seed, n_footprints=n_parents,
                                         draw_order=python27_dict_order(cols["id"][:n_parents]))
                if n > n_parents:  # children: their pixels are their parent's (the same noise)
                    replacer = replacer.extended(source_index[parent_pixels.stop:] - n_parents,
                                                 ys[parent_pixels.stop:], xs[parent_pixels.stop:])
        with timed("centroid.sdss"):
            psf_sigmas = psf_adaptive_sigma_batch(psf.kernels(footprints.peak_x, footprints.peak_y))
            # every later algorithm measures at this centroid
            self._centroids(cols, image, variance, psf, psf_sigmas, replacer)
        x, y = cols["centroid.sdss.x"], cols["centroid.sdss.y"]
        with timed("centroid.gaussian"):
            self._gaussian_centroids(cols, image, replacer)
        with timed("shape.sdss + flux.gaussian"):
            self._shapes(cols, image, variance, replacer)
        with timed("flux.psf + flux.sinc"):
            psf_images = self._linear_fluxes(cols, image, variance, psf, replacer)
        if self.config.circular_aperture_radii:
            with timed("flux.circular"):
                self._circular_apertures(cols, image, variance, exposure.mask, replacer)
        if self.config.kron_flux:
            with timed("flux.kron"):
                self._kron_fluxes(cols, image, variance, replacer, segmentation.moments)
        if self.config.model_fluxes:
            with timed("multishapelet"):
                fits = []
                for i in range(n):
                    with isolated(replacer, i):
                        fits.append(self._model_fluxes(cols, i, image, variance, exposure.mask, psf, psf_images[i],
                                                       footprints.pixels(i)))
                self._model_flux_psf_factors(cols, psf, psf_images, fits)
        with timed("flags + coord"):
            flags = pixel_flags_many(exposure.mask, source_index, ys, xs, x, y)
            for name, values in flags.items():
                cols[f"flags.pixel.{name.replace('_', '.')}"] = values
            sky = exposure.wcs.pixel_to_world_values(x, y)
            cols["coord.ra"], cols["coord.dec"] = np.mod(sky[0], 360.0), sky[1]
        log.debug("measurement CPU seconds: %s", {k: round(v, 3) for k, v in self.timings.items()})
        return cols

    @staticmethod
    def _centroids(cols: dict[str, np.ndarray], image: np.ndarray, variance: np.ndarray, psf: Psf,
                   psf_sigmas: np.ndarray, replacer: NoiseReplacer | None) -> None:
        """centroid.sdss of all sources at their peaks (compiled, on the full image); on failure the peak pixel
        and flags.badcentroid, the errors left NaN (as 2013)."""
        deltas = None if replacer is None else replacer.footprint_deltas()
        x, y, err_xx, err_yy, flag = sdss_centroid_sources(image, variance, cols["peak.x"], cols["peak.y"], psf,
                                                           psf_sigmas, deltas)
        cols["centroid.sdss.x"], cols["centroid.sdss.y"] = x, y
        cols["centroid.sdss.err.xx"][~flag] = err_xx[~flag]
        cols["centroid.sdss.err.yy"][~flag] = err_yy[~flag]
        cols["flags.badcentroid"] = flag

    @staticmethod
    def _gaussian_centroids(cols: dict[str, np.ndarray], image: np.ndarray, replacer: NoiseReplacer | None) -> None:
        """centroid.gaussian of all sources (compiled, on the full image); the rare sources with non-finite
        pixels one by one."""
        x, y = cols["centroid.sdss.x"], cols["centroid.sdss.y"]
        deltas = None if replacer is None else replacer.footprint_deltas()
        gx, gy, _, fallback = gaussian_centroid_sources(image, x, y, deltas)
        for i in fallback:
            with isolated(replacer, int(i)):
                gx[i], gy[i], _ = gaussian_centroid(image, float(x[i]), float(y[i]))
        cols["centroid.gaussian.x"], cols["centroid.gaussian.y"] = gx, gy

    def _shapes(self, cols: dict[str, np.ndarray], image: np.ndarray, variance: np.ndarray,
                replacer: NoiseReplacer | None) -> None:
        """shape.sdss and flux.gaussian of all sources (compiled, on the full image); the rare sources with
        non-finite pixels one by one."""
        x, y = cols["centroid.sdss.x"], cols["centroid.sdss.y"]
        deltas = None if replacer is None else replacer.footprint_deltas()
        moments = adaptive_moments_sources(image, variance, x, y, deltas, shiftmax=self.config.shape_shiftmax)
        cols["shape.sdss.ixx"], cols["shape.sdss.ixy"], cols["shape.sdss.iyy"] = \
            moments.ixx, moments.ixy, moments.iyy
        cols["shape.sdss.err.ixx"] = moments.err_ixx.astype(np.float32)
        cols["shape.sdss.err.ixy"] = moments.err_ixy.astype(np.float32)
        cols["shape.sdss.err.iyy"] = moments.err_iyy.astype(np.float32)
        cols["shape.sdss.flags"] = moments.flag
        cols["flux.gaussian"], cols["flux.gaussian.err"], cols["flux.gaussian.flags"] = gaussian_flux_from_batch(
            moments, shiftmax=self.config.gaussian_flux_shiftmax)
        for i in moments.fallback:
            with isolated(replacer, int(i)):
                self._shape(cols, int(i), image, variance)

    def _shape(self, cols: dict[str, np.ndarray], i: int, image: np.ndarray, variance: np.ndarray) -> None:
        """shape.sdss adaptive moments of source i; flux.gaussian from the same moments."""
        config = self.config
        x, y = float(cols["centroid.sdss.x"][i]), float(cols["centroid.sdss.y"][i])
        shape = adaptive_moments(image, variance, x, y, shiftmax=config.shape_shiftmax)
        cols["shape.sdss.ixx"][i], cols["shape.sdss.ixy"][i], cols["shape.sdss.iyy"][i] = \
            shape.ixx, shape.ixy, shape.iyy
        cols["shape.sdss.err.ixx"][i] = shape.err_ixx
        cols["shape.sdss.err.ixy"][i] = shape.err_ixy
        cols["shape.sdss.err.iyy"][i] = shape.err_iyy
        cols["shape.sdss.flags"][i] = shape.flag
        gauss = gaussian_flux_from_moments(shape, shiftmax=config.gaussian_flux_shiftmax)
        cols["flux.gaussian"][i], cols["flux.gaussian.err"][i] = gauss.flux, gauss.flux_err
        cols["flux.gaussian.flags"][i] = gauss.flag

    def _linear_fluxes(self, cols: dict[str, np.ndarray], image: np.ndarray, variance: np.ndarray, psf: Psf,
                       replacer: NoiseReplacer | None) -> np.ndarray:
        """flux.psf, flux.sinc and the PSF factors of all sources at once, at their centroids; returns the
        PSF images (`Psf.compute_images`) at the centroids.

        These are linear in the image: each source's stamp is cut from the image with every footprint
        noised, and its own footprint's (original - noise) added back, which is exactly the image the
        per-source loop measured on.
        """
        x, y = cols["centroid.sdss.x"], cols["centroid.sdss.y"]
        data, inside = own_footprint_stamps(image, replacer, x, y, SINC_SIZE // 2)
        var = take_stamps(variance, *stamp_indices(image.shape, x, y, SINC_SIZE // 2))
        psf_images = psf.compute_images(x, y)
        flux, err, psf_factor = psf_flux_of_stamps(data, var, np.where(inside, psf_images, 0.0))
        cols["flux.psf"], cols["flux.psf.err"], cols["flux.psf.psffactor"] = flux, err, psf_factor
        cols["flux.psf.raw"] = flux.copy()  # kept when the aperture correction replaces flux.psf
        coefficients = shifted_sinc_coefficients_many(self.config.sinc_radius, x, y)
        cols["flux.sinc"], cols["flux.sinc.err"] = sinc_flux_of_stamps(data, var, coefficients)
        cols["flux.gaussian.psffactor"] = gaussian_flux_psf_factor_batch(psf_images)
        return psf_images

    def _circular_apertures(self, cols: dict[str, np.ndarray], image: np.ndarray, variance: np.ndarray,
                            mask: np.ndarray, replacer: NoiseReplacer | None) -> None:
        """flux.circular.<r> of all sources at their centroids (each with its own footprint put back)."""
        radii = self.config.circular_aperture_radii
        result = circular_aperture_fluxes(image, variance, mask, cols["centroid.sdss.x"], cols["centroid.sdss.y"],
                                          radii, None if replacer is None else replacer.footprint_deltas())
        for k, radius in enumerate(radii):
            prefix = circular_aperture_prefix(radius)
            cols[prefix], cols[f"{prefix}.err"] = result.flux[k], result.flux_err[k]
            cols[f"{prefix}.flags.offimage"], cols[f"{prefix}.flags.masked"] = result.off_image[k], result.masked[k]

    @staticmethod
    def _kron_fluxes(cols: dict[str, np.ndarray], image: np.ndarray, variance: np.ndarray,
                     replacer: NoiseReplacer | None, moments: np.ndarray) -> None:
        """flux.kron of all sources (sep) in the ellipses of their sep `moments` (x2, y2, xy), each with its own
        footprint put back."""
        prepare, restore = (None, None) if replacer is None else (replacer.insert, replacer.remove)
        result = kron_fluxes(image, variance, cols["centroid.sdss.x"], cols["centroid.sdss.y"], moments[:, 0],
                             moments[:, 1], moments[:, 2], prepare, restore)
        cols["flux.kron"], cols["flux.kron.err"] = result.flux, result.flux_err
        cols["flux.kron.radius"], cols["flux.kron.flags"] = result.radius, result.flag

    def _model_fluxes(self, cols: dict[str, np.ndarray], i: int, image: np.ndarray, variance: np.ndarray,
                      mask: np.ndarray, psf: Psf, psf_image: np.ndarray, footprint: tuple[np.ndarray, np.ndarray]
                      ) -> tuple[ModelFluxResult, PsfModel]:
        """multishapelet exp / dev / combo raw fluxes of source i (PSF model fitted to `psf_image`, the PSF
        image at its centroid); returns the fits and that PSF model (for the combo's PSF factor)."""
        x, y = float(cols["centroid.sdss.x"][i]), float(cols["centroid.sdss.y"][i])
        config = self.config.model_flux
        result = model_fluxes(image, variance, mask, footprint[0], footprint[1], x, y,
                              float(cols["shape.sdss.ixx"][i]), float(cols["shape.sdss.ixy"][i]),
                              float(cols["shape.sdss.iyy"][i]), not cols["shape.sdss.flags"][i], psf, config,
                              psf_model=(psf_model := fit_psf_model(psf, x, y, config, psf_image)))
        for name, flux, err in (("exp", result.exp.flux, result.exp.flux_err),
                                ("dev", result.dev.flux, result.dev.flux_err),
                                ("combo", result.combo_flux, result.combo_flux_err)):
            cols[f"multishapelet.{name}.flux"][i] = flux
            cols[f"multishapelet.{name}.flux.err"][i] = err
        return result, psf_model

    def _model_flux_psf_factors(self, cols: dict[str, np.ndarray], psf: Psf, psf_images: np.ndarray,
                                fits: list[tuple[ModelFluxResult, PsfModel]]) -> None:
        """PSF factors of the model fluxes: exp and dev as ratios to the flux.psf factor cached per cell;
        the combo's per source, from the source's own fitted ellipses (`combo_psf_factor`)."""
        cache = PsfModelCache(psf, self.config.model_flux)
        factors = [cache.factors(float(x), float(y), float(p)) for x, y, p in
                   zip(cols["centroid.sdss.x"], cols["centroid.sdss.y"], cols["flux.psf.psffactor"], strict=True)]
        for name in ("exp", "dev", "combo"):
            cols[f"multishapelet.{name}.psffactor"] = np.array([getattr(f, name) for f in factors])
        if self.config.model_flux.combo_psf_ellipses == "source":
            cols["multishapelet.combo.psffactor"] = np.array([
                combo_psf_factor(psf_images[i], float(cols["centroid.sdss.x"][i]),
                                 float(cols["centroid.sdss.y"][i]), *fits[i], f.exp, f.dev, self.config.model_flux)
                for i, f in enumerate(factors)])
