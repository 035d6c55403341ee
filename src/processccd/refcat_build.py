"""make-refcat: a reference catalogue in the layout of the demo's astrometry_net_data/stars.fits, built from a
CSV or FITS table of SDSS stars (e.g. SkyServer/CasJobs output: objID, ra, dec, psfMag_u.., psfMagErr_u..).

Layout (sdss-inputs.md §6): an empty primary HDU and one binary table, columns id (K), sdssid (K), ra, dec
[deg] (D), u, u_err, g, g_err, r, r_err, i, i_err, z, z_err [mag] (D), starnotgal (K).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table, vstack
from astropy.wcs import WCS

from processccd.butler import atomic_path
from processccd.errors import InputError, OutputError

FILTERS = ("u", "g", "r", "i", "z")
# (column, TFORM) of stars.fits, in its order
REFCAT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("id", "K"), ("sdssid", "K"), ("ra", "D"), ("dec", "D"),
    *((name, "D") for band in FILTERS for name in (band, f"{band}_err")),
    ("starnotgal", "K"),
)
# output column -> input names accepted (case-insensitive; SkyServer names first, then the stars.fits ones)
INPUT_NAMES: dict[str, tuple[str, ...]] = {
    "sdssid": ("objid", "sdssid"),
    "ra": ("ra",),
    "dec": ("dec",),
    **{band: (f"psfmag_{band}", band) for band in FILTERS},
    **{f"{band}_err": (f"psfmagerr_{band}", f"{band}_err") for band in FILTERS},
}
OPTIONAL_NAMES = {"id": ("id",), "type": ("type",), "starnotgal": ("starnotgal",)}
SDSS_STAR_TYPE = 6  # PhotoObj.type of a star (the Star view)
MISSING_MAG = -1000.0  # SDSS writes -9999 for an unmeasured magnitude (and error); below this -> NaN
FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz")


@dataclass(frozen=True)
class RefcatSummary:
    """What make-refcat wrote."""

    n_rows: int
    n_read: int
    n_not_star: int
    n_duplicate: int
    ra_range: tuple[float, float]
    dec_range: tuple[float, float]


def read_input_table(path: Path) -> Table:
    """A FITS (first table HDU) or CSV table (lines starting with '#' ignored, e.g. SkyServer's '#Table1')."""
    try:
        if path.name.lower().endswith(FITS_SUFFIXES):
            return Table.read(path, format="fits")
        return Table.read(path, format="ascii.csv", comment="#")
    except FileNotFoundError as err:
        raise InputError(f"{path}: input table not found") from err
    except Exception as err:  # astropy raises many types on malformed tables
        raise InputError(f"{path}: cannot read the input table ({type(err).__name__}: {err})") from err


def _find(table: Table, names: Sequence[str]) -> str | None:
    lower = {name.lower(): name for name in table.colnames}
    return next((lower[name] for name in names if name in lower), None)


def _column(table: Table, key: str, path: Path, dtype: type) -> np.ndarray:
    name = _find(table, INPUT_NAMES[key])
    if name is None:
        raise InputError(f"{path}: no column {' or '.join(INPUT_NAMES[key])} (case-insensitive) in the input table")
    values = table[name]
    if np.ma.is_masked(values):
        raise InputError(f"{path}: column {name} has empty values")
    try:
        return np.asarray(values, dtype=dtype)
    except (TypeError, ValueError) as err:
        raise InputError(f"{path}: column {name} is not numeric ({err})") from err


def build_refcat(paths: Sequence[Path], all_types: bool = False) -> tuple[Table, RefcatSummary]:
    """The catalogue of the rows of every input table: stars only (type = 6, when the input has a type
    column; all rows with `all_types`, starnotgal telling stars), one row per objID (the first),
    RA in [0, 360), unmeasured magnitudes (-9999) as NaN."""
    parts = []
    for path in paths:
        table = read_input_table(Path(path))
        part = Table()
        part["sdssid"] = _column(table, "sdssid", path, np.int64)
        for key in ("ra", "dec", *(name for name, _ in REFCAT_COLUMNS[4:-1])):
            part[key] = _column(table, key, path, np.float64)
        id_name, type_name, star_name = (_find(table, OPTIONAL_NAMES[k]) for k in ("id", "type", "starnotgal"))
        part["id"] = np.asarray(table[id_name], dtype=np.int64) if id_name else np.zeros(len(table), np.int64)
        if type_name is not None:
            part["starnotgal"] = (np.asarray(table[type_name]) == SDSS_STAR_TYPE).astype(np.int64)
        elif star_name is not None:
            part["starnotgal"] = np.asarray(table[star_name], dtype=np.int64)
        else:
            part["starnotgal"] = np.ones(len(table), np.int64)  # the Star view: stars only
        part["has_id"] = np.full(len(table), id_name is not None)
        parts.append(part)
    rows = vstack(parts) if len(parts) > 1 else parts[0]
    n_read = len(rows)
    n_not_star = int(np.sum(rows["starnotgal"] == 0))
    if not all_types:
        rows = rows[rows["starnotgal"] != 0]
    _, first = np.unique(np.asarray(rows["sdssid"]), return_index=True)
    n_duplicate = len(rows) - len(first)
    rows = rows[np.sort(first)]
    if not np.all(rows["has_id"]):
        rows["id"] = np.arange(1, len(rows) + 1, dtype=np.int64)  # a running index, as stars.fits
    ra, dec = np.asarray(rows["ra"]), np.asarray(rows["dec"])
    if not (np.all(np.isfinite(ra)) and np.all(np.isfinite(dec)) and np.all(np.abs(dec) <= 90.0)):
        raise InputError(f"{', '.join(map(str, paths))}: non-finite RA/Dec or |Dec| > 90 in the input")
    ra = np.mod(ra, 360.0)
    rows["ra"] = np.where(ra >= 360.0, 0.0, ra)
    for band in FILTERS:
        for key in (band, f"{band}_err"):
            values = np.asarray(rows[key], dtype=np.float64)
            rows[key] = np.where(values < MISSING_MAG, np.nan, values)
        rows[f"{band}_err"] = np.where(np.asarray(rows[f"{band}_err"]) < 0, np.nan, rows[f"{band}_err"])
    out = Table([np.asarray(rows[name]) for name, _ in REFCAT_COLUMNS], names=[name for name, _ in REFCAT_COLUMNS])
    summary = RefcatSummary(len(out), n_read, n_not_star, n_duplicate,
                            (float(np.min(ra)), float(np.max(ra))) if len(out) else (np.nan, np.nan),
                            (float(np.min(dec)), float(np.max(dec))) if len(out) else (np.nan, np.nan))
    return out, summary


def write_refcat(table: Table, path: Path, sources: Sequence[Path] = ()) -> None:
    """Write `table` as stars.fits is laid out (atomically: a temporary name, then renamed)."""
    columns = [fits.Column(name=name, format=form, array=np.asarray(table[name])) for name, form in REFCAT_COLUMNS]
    hdu = fits.BinTableHDU.from_columns(columns)
    for source in sources:
        hdu.header.add_history(f"make-refcat from {Path(source).name}")
    try:
        with atomic_path(Path(path)) as tmp:
            fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp, overwrite=True)
    except OSError as err:
        raise OutputError(f"{path}: cannot write the reference catalogue ({err.strerror or err})") from err


def footprint_box(fpc_header: fits.Header, margin_arcmin: float = 1.0) -> tuple[float, float, float, float]:
    """(ra_min, ra_max, dec_min, dec_max) [deg] of a whole fpC frame (2048 x 1489) from its header WCS, grown
    by `margin_arcmin`; ra_min > ra_max when the box straddles RA 0."""
    wcs = WCS(fpc_header, naxis=2)
    x = np.array([-0.5, 2047.5, 2047.5, -0.5, 1023.5])
    y = np.array([-0.5, -0.5, 1488.5, 1488.5, 744.0])
    ra, dec = wcs.all_pix2world(x, y, 0)
    centre = ra[-1]
    offset = (ra - centre + 180.0) % 360.0 - 180.0  # relative to the centre, across RA 0
    margin = margin_arcmin / 60.0
    cos_dec = max(np.cos(np.radians(np.max(np.abs(dec)) + margin)), 1e-6)
    ra_min = (centre + offset.min() - margin / cos_dec) % 360.0
    ra_max = (centre + offset.max() + margin / cos_dec) % 360.0
    return float(ra_min), float(ra_max), float(dec.min() - margin), float(dec.max() + margin)


def skyserver_sql(ra_min: float, ra_max: float, dec_min: float, dec_max: float, r_max: float = 21.0) -> str:
    """The SDSS DR7 SkyServer/CasJobs query of the stars in the box (the Star view = PhotoPrimary with type = 6)."""
    mags = ", ".join(f"psfMag_{band}" for band in FILTERS)
    errs = ", ".join(f"psfMagErr_{band}" for band in FILTERS)
    if ra_min <= ra_max:
        ra_condition = f"ra BETWEEN {ra_min:.5f} AND {ra_max:.5f}"
    else:  # the box straddles RA 0
        ra_condition = f"(ra >= {ra_min:.5f} OR ra <= {ra_max:.5f})"
    return (f"SELECT objID, ra, dec, type, {mags},\n       {errs}\nFROM Star\n"
            f"WHERE {ra_condition}\n  AND dec BETWEEN {dec_min:.5f} AND {dec_max:.5f}\n"
            f"  AND psfMag_r < {r_max:g}")
