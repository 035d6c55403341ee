"""Source-catalogue schema (name, dtype, unit, description) and FITS table I/O."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str
    unit: str
    doc: str


def _flux(prefix: str, doc: str) -> list[Column]:
    return [Column(prefix, "f8", "adu", doc), Column(f"{prefix}.err", "f8", "adu", f"error of {prefix}")]


SOURCE_SCHEMA: list[Column] = [
    Column("id", "i8", "", "unique source id: exposure id << 26 | sequence number"),
    Column("coord.ra", "f8", "deg", "right ascension (ICRS) of the centroid"),
    Column("coord.dec", "f8", "deg", "declination (ICRS) of the centroid"),
    Column("flags.negative", "?", "", "detected as a negative footprint"),
    Column("flags.badcentroid", "?", "", "centroid.sdss failed; the centroid is the peak pixel"),
    Column("flags.pixel.edge", "?", "", "centre outside the image or EDGE pixel in the footprint"),
    Column("flags.pixel.interpolated.any", "?", "", "INTRP pixel in the footprint"),
    Column("flags.pixel.interpolated.center", "?", "", "INTRP pixel in the central 3x3"),
    Column("flags.pixel.saturated.any", "?", "", "SAT pixel in the footprint"),
    Column("flags.pixel.saturated.center", "?", "", "SAT pixel in the central 3x3"),
    Column("centroid.sdss.x", "f8", "pix", "SDSS centroid, column (0-based pixel centres)"),
    Column("centroid.sdss.y", "f8", "pix", "SDSS centroid, row (0-based pixel centres)"),
    Column("centroid.sdss.err.xx", "f4", "pix2", "variance of centroid.sdss.x"),
    Column("centroid.sdss.err.yy", "f4", "pix2", "variance of centroid.sdss.y"),
    Column("centroid.gaussian.x", "f8", "pix", "centre of a 2-d Gaussian fit, column"),
    Column("centroid.gaussian.y", "f8", "pix", "centre of a 2-d Gaussian fit, row"),
    Column("centroid.gaussian.err.xx", "f4", "pix2", "variance of centroid.gaussian.x (not computed)"),
    Column("centroid.gaussian.err.yy", "f4", "pix2", "variance of centroid.gaussian.y (not computed)"),
    Column("shape.sdss.ixx", "f8", "pix2", "adaptive second moment xx"),
    Column("shape.sdss.ixy", "f8", "pix2", "adaptive second moment xy"),
    Column("shape.sdss.iyy", "f8", "pix2", "adaptive second moment yy"),
    Column("shape.sdss.err.ixx", "f4", "pix4", "variance of shape.sdss.ixx"),
    Column("shape.sdss.err.ixy", "f4", "pix4", "variance of shape.sdss.ixy"),
    Column("shape.sdss.err.iyy", "f4", "pix4", "variance of shape.sdss.iyy"),
    Column("shape.sdss.flags", "?", "", "adaptive moments failed or fell back to unweighted moments"),
    *_flux("flux.gaussian", "adaptive elliptical Gaussian flux, PSF-factor scaled and aperture corrected"),
    *_flux("flux.psf", "PSF-weighted flux, aperture corrected"),
    *_flux("flux.sinc", "band-limited circular aperture flux, radius 7 pixels"),
    *_flux("multishapelet.exp.flux", "exponential model flux"),
    *_flux("multishapelet.dev.flux", "de Vaucouleurs model flux"),
    *_flux("multishapelet.combo.flux", "exponential + de Vaucouleurs model flux"),
    Column("classification.extendedness", "f8", "", "0 for point sources, 1 for extended ones"),
    Column("aperturecorrection", "f8", "", "aperture correction applied to flux.psf"),
    Column("aperturecorrection.err", "f8", "", "error of the aperture correction"),
]

# Columns beyond the 40 of the 2013 list, kept for diagnostics.
EXTRA_SCHEMA: list[Column] = [
    Column("peak.x", "i4", "pix", "peak pixel of the smoothed image, column"),
    Column("peak.y", "i4", "pix", "peak pixel of the smoothed image, row"),
    Column("footprint.npix", "i4", "", "number of pixels in the (ungrown) footprint"),
    Column("flux.psf.raw", "f8", "adu", "flux.psf before aperture correction"),
    Column("flux.psf.psffactor", "f8", "", "PSF factor of flux.psf (sum of the peak-normalised PSF)"),
    Column("flux.gaussian.psffactor", "f8", "", "PSF factor of flux.gaussian (flux scaled by p_psf / p)"),
    Column("multishapelet.exp.psffactor", "f8", "", "PSF factor of multishapelet.exp.flux"),
    Column("multishapelet.dev.psffactor", "f8", "", "PSF factor of multishapelet.dev.flux"),
    Column("multishapelet.combo.psffactor", "f8", "", "PSF factor of multishapelet.combo.flux"),
]


def empty_columns(n: int, schema: list[Column]) -> dict[str, np.ndarray]:
    """Columns of length n with their initial values: NaN for floats, False for flags, 0 for ints."""
    columns = {}
    for col in schema:
        if col.dtype == "?":
            columns[col.name] = np.zeros(n, dtype=bool)
        elif col.dtype.startswith("f"):
            columns[col.name] = np.full(n, np.nan, dtype=col.dtype)
        else:
            columns[col.name] = np.zeros(n, dtype=col.dtype)
    return columns


def write_source_table(path: Path, columns: dict[str, np.ndarray], schema: list[Column],
                       header: dict[str, Any] | None = None) -> None:
    """Write a FITS binary table with units and column descriptions (TDOCn) in the header."""
    table = Table()
    for col in schema:
        table[col.name] = np.asarray(columns[col.name], dtype=col.dtype)
        if col.unit:
            table[col.name].unit = col.unit
        table[col.name].description = col.doc
    hdu = fits.table_to_hdu(table)
    for i, col in enumerate(schema, start=1):
        hdu.header[f"TDOC{i}"] = col.doc[:68]
    for key, value in (header or {}).items():
        hdu.header[key] = value
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)


def read_source_table(path: Path) -> Table:
    """Read a source table written by `write_source_table` (column names as in the schema)."""
    return Table.read(path, hdu=1, unit_parse_strict="silent")
