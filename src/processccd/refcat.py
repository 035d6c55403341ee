"""Reference catalogue (astrometry_net_data/stars.fits, sdss-inputs.md §6): loading and frame selection."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from processccd.errors import InputError

if TYPE_CHECKING:
    from astropy.wcs import WCS

log = logging.getLogger("processCcd.calibrate.astrometry")


@dataclass
class RefCatConfig:
    """Where the reference catalogue is and how its columns are named (2013 andConfig.py)."""

    path: str = "astrometry_net_data/stars.fits"  # absolute, or relative to the current directory
    hdu: int = 1  # FITS extension holding the table
    id_column: str = "id"
    ra_column: str = "ra"  # [deg]; wrapped to [0, 360)
    dec_column: str = "dec"  # [deg]
    mag_column: str = "{filter}"  # magnitude in the frame's filter; "{filter}" is replaced by u, g, r, i or z
    mag_err_column: str = "{filter}_err"  # error of that magnitude
    star_column: str = "starnotgal"  # true for stars (2013 starGalaxyColumn)
    border_pixels: float = 50.0  # reference objects are taken inside the frame grown by this many pixels


@dataclass(frozen=True)
class ReferenceCatalog:
    """Reference objects of one filter: ids, sky positions [deg], magnitudes and the star flag."""

    ids: np.ndarray  # int64
    ra: np.ndarray  # [0, 360)
    dec: np.ndarray
    mag: np.ndarray
    mag_err: np.ndarray
    is_star: np.ndarray  # bool

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def empty(cls) -> ReferenceCatalog:
        none = np.zeros(0)
        return cls(np.zeros(0, dtype=np.int64), none, none, none, none, np.zeros(0, dtype=bool))

    def subset(self, index: np.ndarray) -> ReferenceCatalog:
        """The objects at `index` (integer or boolean array)."""
        return ReferenceCatalog(self.ids[index], self.ra[index], self.dec[index], self.mag[index],
                                self.mag_err[index], self.is_star[index])

    @classmethod
    def read(cls, path: Path, filter_name: str, config: RefCatConfig | None = None) -> ReferenceCatalog:
        """Read the catalogue's columns for `filter_name`; a missing file or column raises InputError."""
        config = config or RefCatConfig()
        columns = _read_columns(str(path), config.hdu)
        names = {
            "ids": config.id_column,
            "ra": config.ra_column,
            "dec": config.dec_column,
            "mag": config.mag_column.format(filter=filter_name),
            "mag_err": config.mag_err_column.format(filter=filter_name),
            "is_star": config.star_column,
        }
        missing = [name for name in names.values() if name not in columns]
        if missing:
            raise InputError(f"{path}: reference catalogue has no column(s) {', '.join(missing)}")
        ra = np.mod(np.asarray(columns[names["ra"]], dtype=np.float64), 360.0)
        return cls(
            ids=np.array(columns[names["ids"]], dtype=np.int64),
            ra=np.where(ra >= 360.0, 0.0, ra),  # mod of a tiny negative number can round to 360
            dec=np.array(columns[names["dec"]], dtype=np.float64),
            mag=np.array(columns[names["mag"]], dtype=np.float64),
            mag_err=np.array(columns[names["mag_err"]], dtype=np.float64),
            is_star=np.array(columns[names["is_star"]]).astype(bool),
        )

    def in_frame(self, wcs: WCS, width: int, height: int, border: float) -> tuple[ReferenceCatalog, np.ndarray,
                                                                                  np.ndarray]:
        """The objects whose pixel position lies in the frame grown by `border` pixels.

        Returns (catalogue subset, x, y) with x, y their 0-based pixel positions through `wcs`.
        Objects farther from the frame centre than its half-diagonal (plus the border) are discarded
        on the sky first, so that only nearby objects go through the (iterative) SIP inversion.
        """
        empty = np.zeros(0)
        if len(self) == 0:
            return self, empty, empty
        centre_ra, centre_dec = wcs.all_pix2world([[(width - 1) / 2.0, (height - 1) / 2.0]], 0)[0]
        corner_ra, corner_dec = wcs.all_pix2world([[-0.5 - border, -0.5 - border]], 0)[0]
        radius = _separation_deg(centre_ra, centre_dec, np.array([corner_ra]), np.array([corner_dec]))[0]
        near = _separation_deg(centre_ra, centre_dec, self.ra, self.dec) < 1.5 * radius
        nearby = self.subset(near)
        if len(nearby) == 0:
            return nearby, empty, empty
        x, y = wcs.all_world2pix(nearby.ra, nearby.dec, 0)
        inside = ((x >= -0.5 - border) & (x <= width - 0.5 + border)
                  & (y >= -0.5 - border) & (y <= height - 0.5 + border))
        return nearby.subset(inside), x[inside], y[inside]


@lru_cache(maxsize=4)
def _read_columns(path: str, hdu: int) -> dict[str, np.ndarray]:
    """All columns of the table in extension `hdu` (cached: ten frames share one catalogue)."""
    from astropy.io import fits  # on first use: reading the configuration needs no astropy

    try:
        with fits.open(path) as hdul:
            data = hdul[hdu].data
            if data is None or not hasattr(data, "columns"):
                raise InputError(f"{path}: extension {hdu} holds no table")
            return {name: np.array(data[name]) for name in data.columns.names}
    except (OSError, IndexError, KeyError, ValueError) as err:
        raise InputError(f"{path}: cannot read the reference catalogue ({err})") from err


def _separation_deg(ra0: float, dec0: float, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    """Great-circle distance [deg] from (ra0, dec0) to each (ra, dec) (haversine)."""
    ra0r, dec0r, rar, decr = np.radians(ra0), np.radians(dec0), np.radians(ra), np.radians(dec)
    h = np.sin((decr - dec0r) / 2) ** 2 + np.cos(dec0r) * np.cos(decr) * np.sin((rar - ra0r) / 2) ** 2
    return np.degrees(2.0 * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0))))


def resolve_catalog_path(path: str | Path, input_root: Path | None = None) -> Path:
    """The catalogue file: `path` if absolute; else relative to the current directory, or failing that to the
    input repository's parent directory (the demo layout: input/ beside astrometry_net_data/)."""
    path = Path(path)
    if path.is_absolute() or input_root is None:
        return path
    candidate = Path.cwd() / path
    if candidate.exists():
        return candidate
    beside_input = Path(input_root).resolve().parent / path
    return beside_input if beside_input.exists() else candidate


def load_reference_catalog(path: Path, filter_name: str, config: RefCatConfig | None = None
                           ) -> ReferenceCatalog | None:
    """The catalogue, or None with a WARNING when it is missing, unreadable or empty (calibration degrades)."""
    try:
        catalog = ReferenceCatalog.read(path, filter_name, config)
    except InputError as err:
        log.warning("reference catalogue unusable, no photometric calibration: %s", err)
        return None
    if len(catalog) == 0:
        log.warning("reference catalogue %s is empty, no photometric calibration", path)
        return None
    return catalog
