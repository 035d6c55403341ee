"""asTrans reader and the exact SDSS pixel -> (mu, nu) -> (RA, Dec) transform (sdss-inputs.md §5)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from processccd.errors import InputError, MissingInputError
from processccd.sdss.fits import header_number, header_text, open_fits

SDSS_PIXEL_OFFSET = 0.5  # SDSS row/col = our 0-based pixel-centre coordinate + 0.5


@dataclass(frozen=True)
class AsTrans:
    """Astrometric solution of one frame (camcol, filter, field) of an SDSS run.

    a..f and node, incl are in degrees; d_row/d_col are the cubic-in-column distortion coefficients
    (pix, pix/pix^n); cs_*, cc_*, ri_cut are the colour-term parameters (unused: colour 0); mu_err,
    nu_err in arcsec.
    """

    a: float
    b: float
    c: float
    d: float
    e: float
    f: float
    d_row: tuple[float, float, float, float]
    d_col: tuple[float, float, float, float]
    cs_row: float
    cs_col: float
    cc_row: float
    cc_col: float
    ri_cut: float
    node: float
    incl: float
    mjd: float
    airmass: float
    mu_err: float
    nu_err: float

    def pixel_to_great_circle(
        self, x: np.ndarray | float, y: np.ndarray | float, offset: float = SDSS_PIXEL_OFFSET
    ) -> tuple[np.ndarray, np.ndarray]:
        """Great-circle (mu, nu) [deg] of 0-based pixel (x = column, y = row), colour term 0."""
        col = np.asarray(x, dtype=np.float64) + offset
        row = np.asarray(y, dtype=np.float64) + offset
        row_corr = row + np.polynomial.polynomial.polyval(col, self.d_row)
        col_corr = col + np.polynomial.polynomial.polyval(col, self.d_col)
        mu = self.a + self.b * row_corr + self.c * col_corr
        nu = self.d + self.e * row_corr + self.f * col_corr
        return mu, nu

    def great_circle_to_sky(
        self, mu: np.ndarray | float, nu: np.ndarray | float
    ) -> tuple[np.ndarray, np.ndarray]:
        """(RA, Dec) [deg, RA in [0, 360)] of great-circle coordinates (mu, nu) [deg]."""
        mu_rel = np.radians(np.asarray(mu, dtype=np.float64) - self.node)
        nu_rad = np.radians(np.asarray(nu, dtype=np.float64))
        incl = np.radians(self.incl)
        gx = np.cos(mu_rel) * np.cos(nu_rad)
        gy = np.sin(mu_rel) * np.cos(nu_rad)
        gz = np.sin(nu_rad)
        ra = np.mod(self.node + np.degrees(np.arctan2(gy * np.cos(incl) - gz * np.sin(incl), gx)), 360.0)
        # atan2 of a tiny negative angle can round to exactly 360 after the mod
        ra = np.where(ra >= 360.0, 0.0, ra)
        sin_dec = np.clip(gy * np.sin(incl) + gz * np.cos(incl), -1.0, 1.0)
        return ra, np.degrees(np.arcsin(sin_dec))

    def pixel_to_sky(
        self, x: np.ndarray | float, y: np.ndarray | float, offset: float = SDSS_PIXEL_OFFSET
    ) -> tuple[np.ndarray, np.ndarray]:
        """(RA, Dec) [deg] of 0-based pixel (x = column, y = row); SDSS (col, row) = (x, y) + offset."""
        return self.great_circle_to_sky(*self.pixel_to_great_circle(x, y, offset))


def _field_row(fields: np.ndarray, field: int, field0: int, path: Path, where: str) -> int:
    """The index of `field`'s row: row field - FIELD0 as written, else the one row whose `field` column holds
    it. No such row (a field before the first or after the last of the run's solution) is MissingInputError."""
    if fields.ndim != 1 or fields.dtype.kind not in "iu":
        raise InputError(f"{path}: the field column of {where} does not hold one integer per row")
    row_index = field - field0
    if 0 <= row_index < len(fields) and fields[row_index] == field:
        return row_index
    rows = np.flatnonzero(fields == field)
    if len(rows) == 0:
        span = f"fields {int(fields.min())}-{int(fields.max())}" if len(fields) else "no rows"
        raise MissingInputError(f"{path}: field {field} missing from {where} (FIELD0 {field0}, {span})")
    if len(rows) > 1:
        raise InputError(f"{path}: {where} holds {len(rows)} rows of field {field}")
    return int(rows[0])


_COLUMNS = ("a", "b", "c", "d", "e", "f", *(f"dRow{i}" for i in range(4)), *(f"dCol{i}" for i in range(4)), "csRow",
            "csCol", "ccRow", "ccCol", "riCut", "mjd", "airmass", "muErr", "nuErr")


def read_astrans(path: str | Path, camcol: int, filter: str, field: int) -> AsTrans:
    """Read the asTrans solution for (camcol, filter, field) from the run file at `path`."""
    path = Path(path)
    primary_where = "the primary header"
    with open_fits(path, "asTrans") as fits_file:
        primary = fits_file.hdul[0].header
        camcols = header_text(primary, "CAMCOLS", path, primary_where).split()
        filters = header_text(primary, "FILTERS", path, primary_where).split()
        node = header_number(primary, "NODE", path, primary_where)
        incl = header_number(primary, "INCL", path, primary_where)
        field0 = header_number(primary, "FIELD0", path, primary_where, int)
        if str(camcol) not in camcols:
            raise MissingInputError(f"{path}: camcol {camcol} not in CAMCOLS {' '.join(camcols)}")
        if filter not in filters:
            raise InputError(f"{path}: filter {filter!r} not in FILTERS {' '.join(filters)}")
        hdu_index = camcols.index(str(camcol)) * len(filters) + filters.index(filter) + 1
        where = f"HDU {hdu_index}"
        if hdu_index >= len(fits_file):
            raise MissingInputError(f"{path}: {where} (camcol {camcol} filter {filter}) missing "
                                    f"({len(fits_file)} HDUs)")
        table = fits_file.table(hdu_index, f"camcol {camcol} filter {filter}")
        hdu_header = fits_file.header(hdu_index)
        hdu_camcol = header_number(hdu_header, "CAMCOL", path, where, int)
        hdu_filter = header_text(hdu_header, "FILTER", path, where).strip()
        if (hdu_camcol, hdu_filter) != (camcol, filter):
            raise InputError(
                f"{path}: {where} holds camcol {hdu_camcol} filter {hdu_filter}, expected {camcol} {filter}"
            )
        missing = [name for name in ("field", *_COLUMNS) if name not in table.names]
        if missing:
            raise InputError(f"{path}: columns {', '.join(missing)} missing from {where}")
        row_index = _field_row(table.column("field"), field, field0, path, where)
        row = {name: table.column(name)[row_index] for name in _COLUMNS}
        values = {}
        for name in _COLUMNS:
            value = np.asarray(row[name], dtype=np.float64)
            if value.size != 1 or not np.isfinite(value).all():
                raise InputError(f"{path}: {where} field {field}: {name} = {value} is not one finite number")
            values[name] = float(value.reshape(()))
    return AsTrans(
        a=values["a"],
        b=values["b"],
        c=values["c"],
        d=values["d"],
        e=values["e"],
        f=values["f"],
        d_row=tuple(values[f"dRow{i}"] for i in range(4)),
        d_col=tuple(values[f"dCol{i}"] for i in range(4)),
        cs_row=values["csRow"],
        cs_col=values["csCol"],
        cc_row=values["ccRow"],
        cc_col=values["ccCol"],
        ri_cut=values["riCut"],
        node=node,
        incl=incl,
        mjd=values["mjd"],
        airmass=values["airmass"],
        mu_err=values["muErr"],
        nu_err=values["nuErr"],
    )
