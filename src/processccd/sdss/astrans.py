"""asTrans reader and the exact SDSS pixel -> (mu, nu) -> (RA, Dec) transform (sdss-inputs.md §5)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from processccd.errors import InputError

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


def _header_value(header: fits.Header, key: str, where: str, path: Path) -> object:
    """header[key], or InputError naming the file, the HDU and the keyword."""
    if key not in header:
        raise InputError(f"{path}: keyword {key} missing from {where}")
    return header[key]


def read_astrans(path: str | Path, camcol: int, filter: str, field: int) -> AsTrans:
    """Read the asTrans solution for (camcol, filter, field) from the run file at `path`."""
    path = Path(path)
    try:
        hdul = fits.open(path, memmap=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read asTrans file ({exc})") from exc
    with hdul:
        primary = hdul[0].header
        camcols = str(_header_value(primary, "CAMCOLS", "the primary header", path)).split()
        filters = str(_header_value(primary, "FILTERS", "the primary header", path)).split()
        node = float(_header_value(primary, "NODE", "the primary header", path))
        incl = float(_header_value(primary, "INCL", "the primary header", path))
        field0 = int(_header_value(primary, "FIELD0", "the primary header", path))
        if str(camcol) not in camcols:
            raise InputError(f"{path}: camcol {camcol} not in CAMCOLS {' '.join(camcols)}")
        if filter not in filters:
            raise InputError(f"{path}: filter {filter!r} not in FILTERS {' '.join(filters)}")
        hdu_index = camcols.index(str(camcol)) * len(filters) + filters.index(filter) + 1
        if hdu_index >= len(hdul):
            raise InputError(f"{path}: HDU {hdu_index} for camcol {camcol} filter {filter} missing")
        hdu = hdul[hdu_index]
        where = f"HDU {hdu_index}"
        hdu_camcol = int(_header_value(hdu.header, "CAMCOL", where, path))
        hdu_filter = str(_header_value(hdu.header, "FILTER", where, path)).strip()
        if (hdu_camcol, hdu_filter) != (camcol, filter):
            raise InputError(
                f"{path}: {where} holds camcol {hdu_camcol} filter {hdu_filter}, expected {camcol} {filter}"
            )
        data = hdu.data
        row_index = field - field0
        if data is None or not 0 <= row_index < len(data):
            raise InputError(f"{path}: field {field} missing from {where} (first field {field0})")
        names = set(data.columns.names)
        required = ["field", "a", "b", "c", "d", "e", "f"] + [f"dRow{i}" for i in range(4)]
        required += [f"dCol{i}" for i in range(4)]
        required += ["csRow", "csCol", "ccRow", "ccCol", "riCut", "mjd", "airmass", "muErr", "nuErr"]
        missing = [name for name in required if name not in names]
        if missing:
            raise InputError(f"{path}: columns {', '.join(missing)} missing from {where}")
        row = data[row_index]
        if int(row["field"]) != field:
            found = int(row["field"])
            raise InputError(f"{path}: {where} row {row_index} holds field {found}, expected {field}")
        return AsTrans(
            a=float(row["a"]),
            b=float(row["b"]),
            c=float(row["c"]),
            d=float(row["d"]),
            e=float(row["e"]),
            f=float(row["f"]),
            d_row=tuple(float(row[f"dRow{i}"]) for i in range(4)),
            d_col=tuple(float(row[f"dCol{i}"]) for i in range(4)),
            cs_row=float(row["csRow"]),
            cs_col=float(row["csCol"]),
            cc_row=float(row["ccRow"]),
            cc_col=float(row["ccCol"]),
            ri_cut=float(row["riCut"]),
            node=node,
            incl=incl,
            mjd=float(row["mjd"]),
            airmass=float(row["airmass"]),
            mu_err=float(row["muErr"]),
            nu_err=float(row["nuErr"]),
        )
