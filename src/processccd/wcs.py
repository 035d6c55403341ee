"""TAN-SIP FITS WCS fitted to an exact pixel -> sky transform, and its accuracy check."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS, Sip
from astropy.wcs.utils import fit_wcs_from_points

from processccd.errors import CalibrationError

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

    `transform(x, y)` returns (RA, Dec) in degrees for 0-based pixel coordinates; the projection point
    is the sky position of the frame centre.
    """
    x, y = _pixel_grid(width, height, 33, 23)
    ra, dec = transform(x, y)
    sky = SkyCoord(ra, dec, unit="deg", frame="icrs")
    centre_ra, centre_dec = transform(np.array([(width - 1) / 2.0]), np.array([(height - 1) / 2.0]))
    centre = SkyCoord(centre_ra[0], centre_dec[0], unit="deg", frame="icrs")
    wcs = fit_wcs_from_points((x, y), sky, proj_point=centre, projection="TAN", sip_degree=sip_degree)
    if not np.all(np.isfinite(wcs.wcs.cd)):
        raise CalibrationError("TAN-SIP fit of the pixel -> sky transform failed (non-finite CD matrix)")
    if wcs.sip is not None:
        _fit_inverse_sip(wcs, x, y)
    return wcs


def _sip_polynomial(coefficients: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """sum_pq coefficients[p, q] u^p v^q."""
    return np.polynomial.polynomial.polyval2d(u, v, coefficients)


def _fit_inverse_sip(wcs: WCS, x: np.ndarray, y: np.ndarray) -> None:
    """Replace the all-zero inverse SIP (AP, BP) of `wcs` by a least-squares fit on the pixels (x, y).

    fit_wcs_from_points writes AP_ORDER/BP_ORDER with zero coefficients; tools that use the inverse
    polynomials (instead of astropy's iteration) would be off by up to ~0.5 px.
    """
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
    separation = SkyCoord(ra_wcs, dec_wcs, unit="deg").separation(SkyCoord(ra_exact, dec_exact, unit="deg"))
    return float(separation.max().to_value("mas"))
