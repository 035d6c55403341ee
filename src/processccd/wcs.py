"""TAN-SIP FITS WCS fitted to an exact pixel -> sky transform, and its accuracy check."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from processccd.errors import CalibrationError, InputError

if TYPE_CHECKING:
    from astropy.wcs import WCS

FRAME_WIDTH = 2048  # trimmed SDSS frame, columns (x)
FRAME_HEIGHT = 1361  # trimmed SDSS frame, rows (y)

PixelToSky = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _pixel_grid(width: int, height: int, nx: int, ny: int) -> tuple[np.ndarray, np.ndarray]:
    """Flattened (x, y) of an nx x ny grid spanning the frame edges (-0.5 ... size - 0.5)."""
    xx, yy = np.meshgrid(np.linspace(-0.5, width - 0.5, nx), np.linspace(-0.5, height - 0.5, ny))
    return xx.ravel(), yy.ravel()


def fit_tan_sip(
    transform: PixelToSky,
    width: int = FRAME_WIDTH,
    height: int = FRAME_HEIGHT,
    sip_degree: int = 3,
) -> WCS:
    """TAN-SIP WCS (pixel origin 0 = our 0-based pixel centres) fitted to `transform` on a 33 x 23 grid.

    `transform(x, y)` returns (RA, Dec) in degrees for 0-based pixel coordinates. CRPIX is the frame
    centre and CRVAL exactly its sky position; the grid's gnomonic coordinates about CRVAL are fitted by
    linear least squares with polynomials of degree `sip_degree` without constant term (zero at CRPIX by
    construction): the linear terms give CD, the higher ones the SIP A/B. sip_degree < 2 gives plain TAN.
    """
    x, y = _pixel_grid(width, height, 33, 23)
    ra, dec = transform(x, y)
    crpix = np.array([(width + 1) / 2.0, (height + 1) / 2.0])  # FITS pixels (1-based)
    centre_ra, centre_dec = transform(np.array([crpix[0] - 1.0]), np.array([crpix[1] - 1.0]))
    crval = np.array([float(centre_ra[0]), float(centre_dec[0])])
    xi, eta = _gnomonic(ra, dec, crval)
    u = x + 1.0 - crpix[0]
    v = y + 1.0 - crpix[1]
    degree = max(sip_degree, 1)
    terms = [(p, q) for p in range(degree + 1) for q in range(degree + 1 - p) if p + q >= 1]
    scale = 1000.0  # condition the design matrix
    design = np.stack([(u / scale) ** p * (v / scale) ** q for p, q in terms], axis=1)
    coefficients, *_ = np.linalg.lstsq(design, np.stack([xi, eta], axis=1), rcond=None)
    coefficients /= np.array([scale ** (p + q) for p, q in terms])[:, np.newaxis]  # rows: terms, cols: xi, eta
    cd = np.stack([coefficients[terms.index((1, 0))], coefficients[terms.index((0, 1))]], axis=1)
    if not np.all(np.isfinite(cd)) or abs(np.linalg.det(cd)) == 0.0:
        raise CalibrationError("TAN-SIP fit of the pixel -> sky transform failed (singular CD matrix)")

    from astropy.wcs import WCS, Sip  # on first use: reading the configuration needs no astropy

    wcs = WCS(naxis=2)
    wcs.wcs.crpix = crpix
    wcs.wcs.crval = crval
    wcs.wcs.cd = cd
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.radesys = "ICRS"
    wcs.pixel_shape = (width, height)
    if sip_degree < 2:
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        wcs.wcs.set()
        return wcs
    wcs.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
    distortion = np.linalg.solve(cd, coefficients.T).T  # CD^-1 (xi, eta) per term: (u + A, v + B)
    a = np.zeros((sip_degree + 1, sip_degree + 1))
    b = np.zeros((sip_degree + 1, sip_degree + 1))
    for (p, q), (a_pq, b_pq) in zip(terms, distortion, strict=True):
        if p + q >= 2:
            a[p, q] = a_pq
            b[p, q] = b_pq
    wcs.sip = Sip(a, b, None, None, crpix)
    wcs.wcs.set()
    _fit_inverse_sip(wcs, x, y)
    return wcs


def _gnomonic(ra: np.ndarray, dec: np.ndarray, crval: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standard coordinates (xi, eta) [deg] of (ra, dec) [deg] on the tangent plane at crval (WCSLIB TAN).

    With the default LONPOLE = 180 of a zenithal projection, WCSLIB's intermediate world coordinates are
    the standard coordinates: xi toward +RA, eta toward +Dec.
    """
    ra0, dec0 = np.radians(crval)
    delta_ra = np.radians(ra) - ra0
    dec_rad = np.radians(dec)
    cos_dec = np.cos(dec_rad)
    sin_dec = np.sin(dec_rad)
    denominator = sin_dec * np.sin(dec0) + cos_dec * np.cos(dec0) * np.cos(delta_ra)
    xi = cos_dec * np.sin(delta_ra) / denominator
    eta = (sin_dec * np.cos(dec0) - cos_dec * np.sin(dec0) * np.cos(delta_ra)) / denominator
    return np.degrees(xi), np.degrees(eta)


def _sip_polynomial(coefficients: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """sum_pq coefficients[p, q] u^p v^q."""
    return np.polynomial.polynomial.polyval2d(u, v, coefficients)


def _fit_inverse_sip(wcs: WCS, x: np.ndarray, y: np.ndarray) -> None:
    """Set the inverse SIP (AP, BP) of `wcs` by a least-squares fit on the pixels (x, y).

    Tools that use the inverse polynomials (instead of astropy's iteration) need them to map sky -> pixel.
    """
    from astropy.wcs import Sip

    sip = wcs.sip
    order = sip.a_order
    u = x + 1.0 - sip.crpix[0]  # SIP works in FITS pixels relative to CRPIX
    v = y + 1.0 - sip.crpix[1]
    focal_u = u + _sip_polynomial(sip.a, u, v)
    focal_v = v + _sip_polynomial(sip.b, u, v)
    terms = [(p, q) for p in range(order + 1) for q in range(order + 1 - p)]
    scale = 1000.0  # condition the design matrix
    design = np.stack([(focal_u / scale) ** p * (focal_v / scale) ** q for p, q in terms], axis=1)
    coef_u, *_ = np.linalg.lstsq(design, u - focal_u, rcond=None)
    coef_v, *_ = np.linalg.lstsq(design, v - focal_v, rcond=None)
    ap = np.zeros((order + 1, order + 1))
    bp = np.zeros((order + 1, order + 1))
    for (p, q), cu, cv in zip(terms, coef_u, coef_v, strict=True):
        ap[p, q] = cu / scale ** (p + q)
        bp[p, q] = cv / scale ** (p + q)
    wcs.sip = Sip(sip.a, sip.b, ap, bp, sip.crpix)


def wcs_max_error_mas(
    wcs: WCS, transform: PixelToSky, width: int = FRAME_WIDTH, height: int = FRAME_HEIGHT
) -> float:
    """Largest angular distance [mas] between `wcs` (origin 0) and `transform` on a 101 x 71 grid."""
    x, y = _pixel_grid(width, height, 101, 71)
    ra_wcs, dec_wcs = wcs.pixel_to_world_values(x, y)
    ra_exact, dec_exact = transform(x, y)
    from astropy.coordinates import SkyCoord

    separation = SkyCoord(ra_wcs, dec_wcs, unit="deg").separation(SkyCoord(ra_exact, dec_exact, unit="deg"))
    return float(separation.max().to_value("mas"))


FPC_WCS_KEYS = ("CTYPE1", "CTYPE2", "CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2", "CD1_1", "CD1_2", "CD2_1", "CD2_2")


def wcs_from_fpc_header(header: Mapping[str, Any], path: Path | str, width: int = FRAME_WIDTH,
                        height: int = FRAME_HEIGHT) -> WCS:
    """The linear TAN WCS of an fpC primary header (CTYPE, CRPIX, CRVAL, CD), for the trimmed frame.

    The fpC's CRPIX are FITS pixels (1-based: pixel centre x = 0 is X = 1), the convention of the calexp
    WCS too, and trimming the overlap rows at the top keeps the origin, so the cards carry over unchanged
    (bench/header_wcs.py measures the agreement with asTrans). A missing, non-numeric or non-TAN card, or
    a singular CD matrix, raises InputError naming the file.
    """
    missing = [key for key in FPC_WCS_KEYS if key not in header]
    if missing:
        raise InputError(f"{path}: no WCS in the fpC header (keyword(s) {', '.join(missing)} missing)")
    ctype = (str(header["CTYPE1"]).strip(), str(header["CTYPE2"]).strip())
    if ctype != ("RA---TAN", "DEC--TAN"):
        raise InputError(f"{path}: fpC header WCS has CTYPE {ctype[0]!r}, {ctype[1]!r}, expected RA---TAN, DEC--TAN")
    values = {}
    for key in FPC_WCS_KEYS[2:]:
        value = header[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
            raise InputError(f"{path}: fpC header WCS keyword {key} = {value!r} is not a finite number")
        values[key] = float(value)
    cd = np.array([[values["CD1_1"], values["CD1_2"]], [values["CD2_1"], values["CD2_2"]]])
    if np.linalg.det(cd) == 0.0:
        raise InputError(f"{path}: fpC header WCS has a singular CD matrix")
    from astropy.wcs import WCS

    wcs = WCS(naxis=2)
    wcs.wcs.ctype = list(ctype)
    wcs.wcs.crpix = [values["CRPIX1"], values["CRPIX2"]]
    wcs.wcs.crval = [values["CRVAL1"], values["CRVAL2"]]
    wcs.wcs.cd = cd
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.radesys = "ICRS"
    wcs.pixel_shape = (width, height)
    wcs.wcs.set()
    return wcs
