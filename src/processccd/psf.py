"""PSF models: a common interface, a circular Gaussian (for tests and fallbacks) and the SDSS KL PSF."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from processccd.errors import InputError
from processccd.lanczos import shift_image, shift_images
from processccd.sdss.psfield import KLComponent, read_psfield

KERNEL_SIZE = 31  # LSST 2013 used 31x31 PSF kernels; the centre is index (15, 15)
IMAGE_CHUNK = 128  # positions per chunk of `Psf.compute_images`


class Psf:
    """Interface of a PSF model evaluated at a frame position (x = column, y = row, 0-based centres).

    Subclasses implement `kernel`; the derived images follow the LSST 2013 rules
    (measurement-spec.md §1): peak-normalised, shifted with Lanczos-5 so that the array centre
    (index 15, 15) sits on pixel (round(x), round(y)).
    """

    size: int = KERNEL_SIZE

    def kernel(self, x: float, y: float) -> np.ndarray:
        """The model at (x, y), centred on the array centre, not normalised, float64 (size x size)."""
        raise NotImplementedError

    def compute_image(self, x: float, y: float) -> np.ndarray:
        """Peak-normalised image (kernel / central pixel) shifted by (x - round(x), y - round(y))."""
        k = self.kernel(x, y)
        c = self.size // 2
        k = k / k[c, c]
        return shift_image(k, x - np.floor(x + 0.5), y - np.floor(y + 0.5))

    def kernels(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """`kernel` at N positions, shape (N, size, size)."""
        return np.stack([self.kernel(float(x), float(y)) for x, y in zip(xs, ys, strict=True)])

    def compute_images(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """`compute_image` at N positions at once, shape (N, size, size), in chunks of IMAGE_CHUNK positions
        (the kernels and shift matrices of a chunk are the temporaries)."""
        xs = np.asarray(xs, dtype=np.float64)
        ys = np.asarray(ys, dtype=np.float64)
        c = self.size // 2
        shift_x, shift_y = xs - np.floor(xs + 0.5), ys - np.floor(ys + 0.5)
        images = np.empty((xs.size, self.size, self.size))
        for start in range(0, xs.size, IMAGE_CHUNK):
            chunk = slice(start, start + IMAGE_CHUNK)
            k = self.kernels(xs[chunk], ys[chunk])
            images[chunk] = shift_images(k / k[:, c, c][:, None, None], shift_x[chunk], shift_y[chunk])
        return images


class SdssKLPsf(Psf):
    """The SDSS PHOTO KL PSF of one field and filter (psField), as the LSST 2013 stack evaluated it.

    K(x, y) = sum_i a_i(x, y) B_i with a_i = sum_{r, c} C_i[r, c] (0.001 (y + o))^r (0.001 (x + o))^c and
    B_i the basis images trimmed to the central size x size. The 2013 stack used o = 0 (no SDSS half-pixel
    offset); `sdss_offset=0.5` gives PHOTO's own convention (row = y + 0.5, col = x + 0.5).
    """

    def __init__(self, components: Sequence[KLComponent], sdss_offset: float = 0.0, size: int = KERNEL_SIZE) -> None:
        if not components:
            raise ValueError("an SDSS KL PSF needs at least one component")
        shapes = {component.basis.shape for component in components}
        if len(shapes) != 1:
            raise ValueError(f"KL basis images differ in shape: {sorted(shapes)}")
        (nrow, ncol) = shapes.pop()
        if nrow % 2 == 0 or ncol % 2 == 0 or nrow < size or ncol < size:
            raise ValueError(f"KL basis images of {nrow} x {ncol} cannot be trimmed to {size} x {size}")
        self.size = size
        self.sdss_offset = float(sdss_offset)
        nterm_y = max(component.coeffs.shape[0] for component in components)
        nterm_x = max(component.coeffs.shape[1] for component in components)
        # coefficients zero-padded to a common (n_y, n_x) block: shape (ncomp, n_y, n_x)
        self.coeffs = np.zeros((len(components), nterm_y, nterm_x))
        for k, component in enumerate(components):
            self.coeffs[k, : component.coeffs.shape[0], : component.coeffs.shape[1]] = component.coeffs
        half = size // 2
        y0, x0 = nrow // 2 - half, ncol // 2 - half
        self.basis = np.stack([component.basis[y0 : y0 + size, x0 : x0 + size] for component in components])

    @classmethod
    def from_file(cls, path: str | Path, filter: str, sdss_offset: float = 0.0) -> SdssKLPsf:
        """The PSF of `filter` in the psField file at `path`."""
        try:
            return cls(read_psfield(path, filter), sdss_offset=sdss_offset)
        except ValueError as exc:
            raise InputError(f"{path}: {exc}") from exc

    def component_amplitudes(self, x: float, y: float) -> np.ndarray:
        """The amplitudes a_i(x, y) of the KL components at frame position (x, y)."""
        powers_y = (0.001 * (y + self.sdss_offset)) ** np.arange(self.coeffs.shape[1])
        powers_x = (0.001 * (x + self.sdss_offset)) ** np.arange(self.coeffs.shape[2])
        return np.einsum("krc,r,c->k", self.coeffs, powers_y, powers_x)

    def kernel(self, x: float, y: float) -> np.ndarray:
        """sum_i a_i(x, y) B_i on the trimmed size x size grid, not normalised: the (1, n) x (n, size^2) matrix
        product that `np.tensordot(amplitudes, basis, axes=1)` makes, without its Python overhead (a quarter of the
        time of a call; the pipeline calls this for every source)."""
        amplitudes = self.component_amplitudes(x, y).reshape(1, -1)
        return np.dot(amplitudes, self.basis.reshape(len(self.basis), -1)).reshape(self.basis.shape[1:])

    def kernels(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """`kernel` at N positions with one tensor contraction, shape (N, size, size)."""
        xs = np.asarray(xs, dtype=np.float64)
        ys = np.asarray(ys, dtype=np.float64)
        powers_y = (0.001 * (ys[:, None] + self.sdss_offset)) ** np.arange(self.coeffs.shape[1])
        powers_x = (0.001 * (xs[:, None] + self.sdss_offset)) ** np.arange(self.coeffs.shape[2])
        amplitudes = np.einsum("krc,nr,nc->nk", self.coeffs, powers_y, powers_x)
        return np.tensordot(amplitudes, self.basis, axes=1)

    def write_fits(self, path: str | Path) -> None:
        """Persist the model: one table row per KL component (COEFFS, trimmed BASIS image).

        The bytes are those astropy writes for the `BinTableHDU` of these columns (`_table_header`), assembled
        with numpy: the header text, made once per shape and offset, then the big-endian rows."""
        from processccd.table import _fits_blocks, _primary_header_block

        rows = np.empty(len(self.coeffs), dtype=[("COEFFS", ">f8", self.coeffs.shape[1:]),
                                                 ("BASIS", ">f8", self.basis.shape[1:])])
        rows["COEFFS"], rows["BASIS"] = self.coeffs, self.basis
        header = _table_header(self.coeffs.shape, self.basis.shape[1:], self.sdss_offset)
        with open(path, "wb") as stream:
            stream.write(_primary_header_block())
            stream.write(header)
            stream.write(_fits_blocks(rows.tobytes(), b"\0"))

    @classmethod
    def read_fits(cls, path: str | Path) -> SdssKLPsf:
        """Read a model written by `write_fits`."""
        from astropy.io import fits

        with fits.open(path) as hdul:
            table = hdul["SDSSKLPSF"]
            coeffs, basis = np.array(table.data["COEFFS"]), np.array(table.data["BASIS"])
            offset = float(table.header["SDSSOFF"])
        components = [KLComponent(coeffs=c, basis=b) for c, b in zip(coeffs, basis, strict=True)]
        return cls(components, sdss_offset=offset, size=basis.shape[-1])


@functools.cache
def _table_header(coeffs_shape: tuple[int, ...], basis_shape: tuple[int, ...], sdss_offset: float) -> bytes:
    """The header, as astropy writes it, of the psf table of `SdssKLPsf.write_fits` for coefficients and basis
    images of these shapes (made by astropy from zero arrays: only the shapes and the offset enter it)."""
    from astropy.io import fits  # on first use: reading the configuration needs no astropy

    coeffs, basis = np.zeros(coeffs_shape), np.zeros((coeffs_shape[0], *basis_shape))
    columns = [
        fits.Column(name="COEFFS", format=f"{coeffs[0].size}D", dim=f"({coeffs_shape[2]},{coeffs_shape[1]})",
                    array=coeffs),
        fits.Column(name="BASIS", format=f"{basis[0].size}D", dim=f"({basis_shape[1]},{basis_shape[0]})",
                    array=basis),
    ]
    table = fits.BinTableHDU.from_columns(columns, name="SDSSKLPSF")
    table.header["SDSSOFF"] = (sdss_offset, "offset added to x, y in the polynomial")
    table.header["COMMENT"] = "a_k(x,y) = sum_rc COEFFS_k[r,c] (0.001 (y+SDSSOFF))^r (0.001 (x+SDSSOFF))^c"
    table.header["COMMENT"] = "PSF kernel(x,y) = sum_k a_k(x,y) BASIS_k, centre at the middle pixel"
    return table.header.tostring().encode("ascii")


ADAPTIVE_WIDTH_MAX_ITER = 100  # meas_algorithms PsfAttributes (2013): MAXIT
ADAPTIVE_WIDTH_TOLERANCE = np.float32(1e-4)  # ... and TOL, a float
ADAPTIVE_WIDTH_MAX_EXPONENT = 14.0  # pixels whose weight exponent exceeds this are skipped


def adaptive_gaussian_width(psf_image: np.ndarray) -> float:
    """Width of the Gaussian that 2013 detection smoothed with: meas_algorithms PsfAttributes'
    computeGaussianWidth(ADAPTIVE_MOMENT) of a PSF image.

    Centre: the 2-D Gaussian fit (centroid.gaussian) started at the stamp's (w // 2, h // 2) (that point
    itself when the fit gives none). Moments: a
    *circular* adaptive Gaussian weight exp(-w r^2 / 2), w starting at 0.5 and updated to
    1 / sigma_ow - w with sigma_ow = (1/2) sum(I r^2 weight) / sum(I weight), until sigma_ow changes by less
    than 1e-4 relative (at most 100 passes); the width is sqrt(1 / w) of the last weight. The arithmetic
    follows the C++ float/double mix (coordinates, exponents, weights and weighted pixels in float32, sums
    in float64), because the loose tolerance makes the result depend on the path. Unlike the elliptical
    adaptive moments' determinant radius this ignores the PSF's ellipticity (they differ by up to 0.3 %
    on the demo frames, enough to move 5-sigma footprints). A failed iteration falls back to the
    unweighted moment (or 1/12, a single pixel), as the original.
    """
    from processccd.meas.centroid import gaussian_centroid

    image = np.asarray(psf_image, dtype=np.float64)
    height, width = image.shape
    x_centre, y_centre, _ = gaussian_centroid(image, float(width // 2), float(height // 2))
    if not (math.isfinite(x_centre) and math.isfinite(y_centre)):  # no fit (e.g. a stamp under 8 px): its centre
        x_centre, y_centre = float(width // 2), float(height // 2)
    x = np.arange(width, dtype=np.float32) - np.float32(x_centre)
    y = np.arange(height, dtype=np.float32) - np.float32(y_centre)
    r2 = (x * x)[None, :] + (y * y)[:, None]  # float32, as (x2 + y2) in float
    pixels = image.astype(np.float32)

    def half_moment(weight_inverse_variance: float) -> float | None:
        if abs(weight_inverse_variance) > 1e6:
            return None
        exponent = (r2.astype(np.float64) * weight_inverse_variance).astype(np.float32)
        used = exponent <= ADAPTIVE_WIDTH_MAX_EXPONENT
        weight = np.exp(-0.5 * exponent[used].astype(np.float64)).astype(np.float32)
        weighted = pixels[used] * weight
        total = float(np.sum(weighted, dtype=np.float64))
        total_r2 = float(np.sum(r2[used] * weighted, dtype=np.float64))
        if total <= 0 or total_r2 < 0:
            return None
        return 0.5 * total_r2 / total

    w11 = 0.5
    previous = np.float32(1e6)
    converged = False
    for iteration in range(ADAPTIVE_WIDTH_MAX_ITER):
        moment = half_moment(w11)
        if moment is None:
            break
        sigma_ow = np.float32(moment)
        if iteration > 0 and abs(float(sigma_ow / previous) - 1.0) < ADAPTIVE_WIDTH_TOLERANCE:
            converged = True
            break
        previous = sigma_ow
        w11 = 1.0 / float(sigma_ow) - w11
        if w11 <= 0:
            break
    if converged:
        return float(np.sqrt(1.0 / w11))
    unweighted = half_moment(0.0)
    return float(np.sqrt(unweighted if unweighted is not None else 1.0 / 12.0))
