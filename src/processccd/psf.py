"""PSF models: a common interface, a circular Gaussian (for tests and fallbacks) and the SDSS KL PSF."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits

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
        """sum_i a_i(x, y) B_i on the trimmed size x size grid, not normalised."""
        return np.tensordot(self.component_amplitudes(x, y), self.basis, axes=1)

    def kernels(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """`kernel` at N positions with one tensor contraction, shape (N, size, size)."""
        xs = np.asarray(xs, dtype=np.float64)
        ys = np.asarray(ys, dtype=np.float64)
        powers_y = (0.001 * (ys[:, None] + self.sdss_offset)) ** np.arange(self.coeffs.shape[1])
        powers_x = (0.001 * (xs[:, None] + self.sdss_offset)) ** np.arange(self.coeffs.shape[2])
        amplitudes = np.einsum("krc,nr,nc->nk", self.coeffs, powers_y, powers_x)
        return np.tensordot(amplitudes, self.basis, axes=1)

    def write_fits(self, path: str | Path) -> None:
        """Persist the model: one table row per KL component (COEFFS, trimmed BASIS image)."""
        columns = [
            fits.Column(name="COEFFS", format=f"{self.coeffs[0].size}D", dim=f"({self.coeffs.shape[2]},"
                        f"{self.coeffs.shape[1]})", array=self.coeffs),
            fits.Column(name="BASIS", format=f"{self.basis[0].size}D", dim=f"({self.size},{self.size})",
                        array=self.basis),
        ]
        table = fits.BinTableHDU.from_columns(columns, name="SDSSKLPSF")
        table.header["SDSSOFF"] = (self.sdss_offset, "offset added to x, y in the polynomial")
        table.header["COMMENT"] = "a_k(x,y) = sum_rc COEFFS_k[r,c] (0.001 (y+SDSSOFF))^r (0.001 (x+SDSSOFF))^c"
        table.header["COMMENT"] = "PSF kernel(x,y) = sum_k a_k(x,y) BASIS_k, centre at the middle pixel"
        fits.HDUList([fits.PrimaryHDU(), table]).writeto(path, overwrite=True)

    @classmethod
    def read_fits(cls, path: str | Path) -> SdssKLPsf:
        """Read a model written by `write_fits`."""
        with fits.open(path) as hdul:
            table = hdul["SDSSKLPSF"]
            coeffs, basis = np.array(table.data["COEFFS"]), np.array(table.data["BASIS"])
            offset = float(table.header["SDSSOFF"])
        components = [KLComponent(coeffs=c, basis=b) for c, b in zip(coeffs, basis, strict=True)]
        return cls(components, sdss_offset=offset, size=basis.shape[-1])
