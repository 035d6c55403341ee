"""tsField reader: photometric calibration and observing conditions of one field (sdss-inputs.md §3)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from processccd.errors import DataIdError, InputError
from processccd.sdss.fits import header_number, header_text, open_fits

FILTERS = ("u", "g", "r", "i", "z")
SDSS_EXPTIME = 53.907456  # s, drift-scan exposure time of every SDSS frame


def filter_index(filter: str) -> int:
    """Index of `filter` in the SDSS ugriz arrays."""
    if filter not in FILTERS:
        raise DataIdError(f"unknown SDSS filter {filter!r} (expected one of {' '.join(FILTERS)})")
    return FILTERS.index(filter)


@dataclass(frozen=True, eq=False)
class TsField:
    """Calibration of one field; every array holds the five filters in ugriz order.

    gain [e-/DN], dark_variance [DN^2], aa/aa_err (zero point and its error, mag), kk (extinction
    coefficient, mag/airmass), airmass, mjd (TAI), saturation_level [DN], sky [maggies/arcsec^2],
    psf_width [arcsec], neff_psf [pix]; quality 1 BAD, 2 ACCEPTABLE, 3 GOOD.
    """

    run: int
    camcol: int
    field: int
    gain: np.ndarray
    dark_variance: np.ndarray
    aa: np.ndarray
    aa_err: np.ndarray
    kk: np.ndarray
    airmass: np.ndarray
    mjd: np.ndarray
    saturation_level: np.ndarray
    sky: np.ndarray
    psf_width: np.ndarray
    neff_psf: np.ndarray
    quality: int

    def zero_point(self, filter: str, exptime: float = SDSS_EXPTIME) -> float:
        """Magnitude of 1 DN in an exposure of `exptime` s: -(aa + kk*airmass) + 2.5 log10(exptime)."""
        i = filter_index(filter)
        return -(float(self.aa[i]) + float(self.kk[i]) * float(self.airmass[i])) + 2.5 * math.log10(exptime)

    def flux_mag0(self, filter: str, exptime: float = SDSS_EXPTIME) -> float:
        """DN of a 0-mag source in an exposure of `exptime` s: 10**(0.4 * zero_point)."""
        return 10.0 ** (0.4 * self.zero_point(filter, exptime))

    def zero_point_err(self, filter: str) -> float:
        """Error of the zero point (aaErr) [mag]."""
        return float(self.aa_err[filter_index(filter)])


# column -> (attribute, validity test or None, what a valid value is); quality is read separately
_COLUMNS: dict[str, tuple[str, Callable[[np.ndarray], np.ndarray] | None, str]] = {
    "gain": ("gain", lambda v: np.isfinite(v) & (v > 0), "positive"),
    "dark_variance": ("dark_variance", lambda v: np.isfinite(v) & (v >= 0), "non-negative"),
    "aa": ("aa", np.isfinite, "finite"),
    "aaErr": ("aa_err", lambda v: np.isfinite(v) & (v >= 0), "non-negative"),
    "kk": ("kk", np.isfinite, "finite"),
    "airmass": ("airmass", lambda v: np.isfinite(v) & (v >= 1), ">= 1"),
    "mjd": ("mjd", np.isfinite, "finite"),
    "saturation_level": ("saturation_level", lambda v: np.isfinite(v) & (v > 0), "positive"),
    "sky": ("sky", None, ""),
    "psf_width": ("psf_width", None, ""),
    "neff_psf": ("neff_psf", None, ""),
}


def read_tsfield(path: str | Path, filter: str | None = None) -> TsField:
    """Read the one-field tsField file at `path`.

    Every filter's calibration must be valid, or only `filter`'s when given (so that a bad value in
    one filter does not stop the frames of the others).
    """
    path = Path(path)
    with open_fits(path, "tsField") as fits_file:
        header = fits_file.hdul[0].header
        run = header_number(header, "RUN", path, "the primary header", int)
        camcol = header_number(header, "CAMCOL", path, "the primary header", int)
        filters = tuple(header_text(header, "FILTERS", path, "the primary header", " ".join(FILTERS)).split())
        if filters != FILTERS:
            raise InputError(f"{path}: FILTERS is {' '.join(filters)!r}, expected 'u g r i z'")
        table = fits_file.table(1, "field table")
        if len(table) != 1:
            raise InputError(f"{path}: HDU 1 must hold exactly one field row")
        missing = [name for name in ("field", "quality", *_COLUMNS) if name not in table.names]
        if missing:
            raise InputError(f"{path}: columns {', '.join(missing)} missing from HDU 1")
        row = {name: table.column(name)[0] for name in ("field", "quality", *_COLUMNS)}
        for column in ("field", "quality"):
            if np.asarray(row[column]).dtype.kind not in "iu" or np.asarray(row[column]).size != 1:
                raise InputError(f"{path}: column {column} of HDU 1 is not one integer")
        arrays: dict[str, np.ndarray] = {}
        for column, (attribute, is_valid, meaning) in _COLUMNS.items():
            values = np.array(row[column], dtype=np.float64).reshape(-1)
            if values.size != len(FILTERS):
                raise InputError(f"{path}: column {column} holds {values.size} values, expected 5")
            bad = np.zeros(values.size, dtype=bool) if is_valid is None else ~is_valid(values)
            if filter is not None:  # only the frame's own filter has to be usable
                bad &= np.arange(values.size) == filter_index(filter)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise InputError(f"{path}: {column}[{FILTERS[i]}] = {values[i]} is not {meaning}")
            values.flags.writeable = False
            arrays[attribute] = values
        return TsField(
            run=run,
            camcol=camcol,
            field=int(row["field"]),
            quality=int(row["quality"]),
            **arrays,
        )
