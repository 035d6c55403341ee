"""psField reader: the KL PSF components and PSF statistics of one field and filter (sdss-inputs.md §4)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from processccd.errors import InputError
from processccd.sdss.fits import BinTable, FitsFile, header_text, open_fits
from processccd.sdss.tsfield import FILTERS, filter_index

if TYPE_CHECKING:
    from astropy.io import fits

MAX_POLY_TERMS = 5  # c is stored as a 5x5 block; only [:nrow_b, :ncol_b] is meaningful
STATS_HDU = 6
MIN_BASIS_SIZE = 31  # basis images are trimmed to the 31 x 31 kernel of processccd.psf
# statistics that must be positive / non-negative (the others only finite)
POSITIVE_STATS = ("psf_width", "psf_sigma1", "psf_sigma2", "gain", "skysig")
NON_NEGATIVE_STATS = ("psf_b", "dark_variance")


@dataclass(frozen=True, eq=False)
class KLComponent:
    """One KL component: a spatial polynomial and a basis image.

    coeffs[r, c] multiplies (0.001 row)^r (0.001 col)^c (shape (nrow_b, ncol_b)); basis[row, col] is the
    51x51 basis image (float64) with its centre at index (25, 25).
    """

    coeffs: np.ndarray
    basis: np.ndarray


@dataclass(frozen=True)
class PsFieldStats:
    """Per-field PSF statistics of one filter from psField HDU 6.

    psf_width [arcsec] is the effective FWHM of the double-Gaussian fit (sigma1, sigma2 [pix], b = ratio of
    the second Gaussian's amplitude); gain [e-/DN]; dark_variance [DN^2]; sky, skysig [DN/pix].
    """

    psf_width: float
    psf_sigma1: float
    psf_sigma2: float
    psf_b: float
    gain: float
    dark_variance: float
    sky: float
    skysig: float


def _table(fits_file: FitsFile, index: int, columns: tuple[str, ...], path: Path, what: str) -> BinTable:
    """Binary-table HDU `index`, checked to hold at least one row and `columns`."""
    table = fits_file.table(index, what)
    if len(table) == 0:
        raise InputError(f"{path}: HDU {index} is empty")
    missing = [name for name in columns if name not in table.names]
    if missing:
        raise InputError(f"{path}: columns {', '.join(missing)} missing from HDU {index}")
    return table


def _check_filters(hdul: fits.HDUList, path: Path) -> None:
    filters = tuple(header_text(hdul[0].header, "FILTERS", path, "the primary header", " ".join(FILTERS)).split())
    if filters != FILTERS:
        raise InputError(f"{path}: FILTERS is {' '.join(filters)!r}, expected 'u g r i z'")


def read_psfield(path: str | Path, filter: str) -> list[KLComponent]:
    """The KL PSF components of `filter` (HDU = filter index + 1), one per table row."""
    path = Path(path)
    index = filter_index(filter) + 1
    with open_fits(path, "psField") as fits_file:
        _check_filters(fits_file.hdul, path)
        table = _table(fits_file, index, ("nrow_b", "ncol_b", "c", "RNROW", "RNCOL", "RROWS"), path,
                       f"KL PSF of filter {filter}")
        basis_pixels, basis_sizes = table.variable_arrays("RROWS")
        bases = np.split(basis_pixels, np.cumsum(basis_sizes)[:-1])
        components = []
        for k in range(len(table)):
            where = f"HDU {index} ({filter}) component {k}"
            row = {name: table.column(name)[k] for name in ("nrow_b", "ncol_b", "c", "RNROW", "RNCOL")}
            nrow_b, ncol_b = int(row["nrow_b"]), int(row["ncol_b"])
            if not (1 <= nrow_b <= MAX_POLY_TERMS and 1 <= ncol_b <= MAX_POLY_TERMS):
                raise InputError(f"{path}: {where}: polynomial size {nrow_b} x {ncol_b} outside 1..5")
            c = np.asarray(row["c"], dtype=np.float64).reshape(-1)
            if c.size != MAX_POLY_TERMS**2:
                raise InputError(f"{path}: {where}: c holds {c.size} values, expected 25")
            coeffs = c.reshape(MAX_POLY_TERMS, MAX_POLY_TERMS)[:nrow_b, :ncol_b].copy()
            nrow, ncol = int(row["RNROW"]), int(row["RNCOL"])
            pixels = np.asarray(bases[k], dtype=np.float64)
            if nrow <= 0 or ncol <= 0 or pixels.size != nrow * ncol:
                raise InputError(f"{path}: {where}: basis of {pixels.size} pixels, expected {nrow} x {ncol}")
            if not (np.all(np.isfinite(coeffs)) and np.all(np.isfinite(pixels))):
                raise InputError(f"{path}: {where}: non-finite coefficients or basis pixels")
            coeffs.flags.writeable = False
            basis = pixels.reshape(nrow, ncol)
            basis.flags.writeable = False
            components.append(KLComponent(coeffs=coeffs, basis=basis))
        shapes = sorted({component.basis.shape for component in components})
        if len(shapes) != 1:
            raise InputError(f"{path}: HDU {index} ({filter}): KL basis images differ in shape: {shapes}")
        nrow, ncol = shapes[0]
        if nrow % 2 == 0 or ncol % 2 == 0 or min(nrow, ncol) < MIN_BASIS_SIZE:
            raise InputError(f"{path}: HDU {index} ({filter}): KL basis images of {nrow} x {ncol}, expected odd "
                             f"sizes of at least {MIN_BASIS_SIZE}")
        return components


def read_psfield_stats(path: str | Path, filter: str) -> PsFieldStats:
    """The PSF statistics of `filter` from HDU 6 (arrays of 5 in ugriz order)."""
    path = Path(path)
    i = filter_index(filter)
    columns = {
        "psf_width": "psf_width",
        "psf_sigma1": "psf_sigma1_2G",
        "psf_sigma2": "psf_sigma2_2G",
        "psf_b": "psf_b_2G",
        "gain": "gain",
        "dark_variance": "dark_variance",
        "sky": "sky",
        "skysig": "skysig",
    }
    with open_fits(path, "psField") as fits_file:
        _check_filters(fits_file.hdul, path)
        table = _table(fits_file, STATS_HDU, tuple(columns.values()), path, "PSF statistics")
        row = {column: table.column(column)[0] for column in columns.values()}
        values = {}
        for attribute, column in columns.items():
            array = np.asarray(row[column], dtype=np.float64).reshape(-1)
            if array.size != len(FILTERS) or not np.isfinite(array[i]):
                raise InputError(f"{path}: HDU {STATS_HDU} column {column}[{filter}] missing or not finite")
            values[attribute] = float(array[i])
        for attribute in POSITIVE_STATS + NON_NEGATIVE_STATS:
            limit_ok = values[attribute] > 0 if attribute in POSITIVE_STATS else values[attribute] >= 0
            if not limit_ok:
                raise InputError(f"{path}: HDU {STATS_HDU} {columns[attribute]}[{filter}] = {values[attribute]} is "
                                 f"{'not positive' if attribute in POSITIVE_STATS else 'negative'}")
        return PsFieldStats(**values)
