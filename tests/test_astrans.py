"""Tests of the asTrans reader and the exact SDSS pixel -> sky transform."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from processccd.errors import InputError, MissingInputError
from processccd.sdss.astrans import AsTrans, read_astrans

FILTER_INDEX = {"u": 0, "g": 1, "r": 2, "i": 3, "z": 4}
FRAMES = [(run, field, band) for run, field in [(4192, 300), (6377, 399)] for band in "ugriz"]
MAS_PER_DEG = 3.6e6
PIXEL_DEG = 0.396 / 3600.0

SIMPLE = AsTrans(
    a=351.5, b=PIXEL_DEG, c=0.0, d=-0.009, e=0.0, f=PIXEL_DEG,
    d_row=(0.0, 0.0, 0.0, 0.0), d_col=(0.0, 0.0, 0.0, 0.0),
    cs_row=0.0, cs_col=0.0, cc_row=0.0, cc_col=0.0, ri_cut=100.0,
    node=95.0, incl=0.0, mjd=52931.2, airmass=1.2, mu_err=0.05, nu_err=0.06,
)


def sky_vector(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """Unit vectors (..., 3) of equatorial positions."""
    ra, dec = np.radians(ra_deg), np.radians(dec_deg)
    return np.stack([np.cos(ra) * np.cos(dec), np.sin(ra) * np.cos(dec), np.sin(dec)], axis=-1)


def angular_distance_mas(ra1, dec1, ra2, dec2) -> np.ndarray:
    """Angle between positions [mas] (robust at small separations)."""
    v1, v2 = sky_vector(ra1, dec1), sky_vector(ra2, dec2)
    angle = np.arctan2(np.linalg.norm(np.cross(v1, v2), axis=-1), np.sum(v1 * v2, axis=-1))
    return np.degrees(angle) * MAS_PER_DEG


# --- great circle -> equatorial ------------------------------------------------------------------


@pytest.mark.parametrize("incl", [0.0, 10.0, 35.0, -25.0])
def test_ascending_node_and_circle_apex(incl: float) -> None:
    transform = replace(SIMPLE, node=95.0, incl=incl)
    ra, dec = transform.great_circle_to_sky(np.array([95.0, 185.0]), np.array([0.0, 0.0]))
    np.testing.assert_allclose(ra, [95.0, 185.0], atol=1e-12)
    np.testing.assert_allclose(dec, [0.0, incl], atol=1e-12)


@pytest.mark.parametrize("incl", [10.0, 35.0])
def test_great_circle_pole(incl: float) -> None:
    ra, dec = replace(SIMPLE, node=95.0, incl=incl).great_circle_to_sky(123.0, 90.0)
    assert ra == pytest.approx(5.0, abs=1e-9)
    assert dec == pytest.approx(90.0 - incl, abs=1e-9)


@pytest.mark.parametrize("node, incl", [(95.0, 0.0), (95.0, 20.0), (300.0, -40.0), (0.0, 63.0)])
def test_great_circle_matches_vector_construction(node: float, incl: float) -> None:
    """(mu, nu) = longitude along the circle from the node and latitude from it, built from vectors."""
    rng = np.random.default_rng(1)
    mu = rng.uniform(-180.0, 540.0, 500)
    nu = rng.uniform(-89.0, 89.0, 500)
    node_vec = sky_vector(np.array(node), np.array(0.0))
    pole_vec = sky_vector(np.array(node - 90.0), np.array(90.0 - incl))
    along_vec = np.cross(pole_vec, node_vec)
    m, n = np.radians(mu - node)[:, None], np.radians(nu)[:, None]
    point = np.cos(n) * (np.cos(m) * node_vec + np.sin(m) * along_vec) + np.sin(n) * pole_vec
    expected_ra = np.degrees(np.arctan2(point[:, 1], point[:, 0])) % 360.0
    expected_dec = np.degrees(np.arcsin(point[:, 2]))
    ra, dec = replace(SIMPLE, node=node, incl=incl).great_circle_to_sky(mu, nu)
    assert np.all((ra >= 0.0) & (ra < 360.0))
    assert angular_distance_mas(ra, dec, expected_ra, expected_dec).max() < 1e-3


def test_zero_inclination_is_identity_with_ra_wrapped() -> None:
    mu = np.array([-8.5, 351.5, 0.0, 359.999])
    ra, dec = SIMPLE.great_circle_to_sky(mu, np.array([0.1, -1.2, 0.0, 0.5]))
    np.testing.assert_allclose(ra, [351.5, 351.5, 0.0, 359.999], atol=1e-10)
    np.testing.assert_allclose(dec, [0.1, -1.2, 0.0, 0.5], atol=1e-12)


# --- pixel -> great circle -------------------------------------------------------------------------


def test_pixel_offset_convention() -> None:
    """Our pixel (-0.5, -0.5) is SDSS (row, col) = (0, 0), where mu = a and nu = d."""
    ra, dec = SIMPLE.pixel_to_sky(-0.5, -0.5)
    assert ra == pytest.approx(351.5, abs=1e-12)
    assert dec == pytest.approx(-0.009, abs=1e-12)
    ra0, dec0 = SIMPLE.pixel_to_sky(-0.5, -0.5, offset=0.0)
    assert (SIMPLE.a - ra0) * 3600 == pytest.approx(0.5 * 0.396)
    assert (SIMPLE.d - dec0) * 3600 == pytest.approx(0.5 * 0.396)


def test_distortion_polynomials_in_column() -> None:
    transform = replace(SIMPLE, d_row=(0.1, 1e-4, -2e-7, 3e-11), d_col=(-0.2, 5e-4, 1e-7, -4e-11))
    x = np.array([0.0, 700.0, 2047.0])
    y = np.array([5.0, 900.0, 1360.0])
    col, row = x + 0.5, y + 0.5
    row_m = row + 0.1 + 1e-4 * col - 2e-7 * col**2 + 3e-11 * col**3
    col_m = col - 0.2 + 5e-4 * col + 1e-7 * col**2 - 4e-11 * col**3
    mu, nu = transform.pixel_to_great_circle(x, y)
    np.testing.assert_allclose(mu, 351.5 + PIXEL_DEG * row_m, rtol=0, atol=1e-12)
    np.testing.assert_allclose(nu, -0.009 + PIXEL_DEG * col_m, rtol=0, atol=1e-12)


# --- reader: synthetic files -----------------------------------------------------------------------

COLUMNS = ["a", "b", "c", "d", "e", "f"] + [f"dRow{i}" for i in range(4)] + [f"dCol{i}" for i in range(4)]
COLUMNS += ["csRow", "csCol", "ccRow", "ccCol", "riCut", "mjd", "airmass", "muErr", "nuErr"]


def write_astrans(
    path: Path,
    camcols: str = "1 2",
    filters: str = "r i u z g",
    field0: int = 11,
    nfields: int = 5,
    drop_keyword: str | None = None,
    bad_filter_hdu: int | None = None,
) -> Path:
    """A small asTrans file whose column `a` holds 1000 * HDU index + field number."""
    primary = fits.PrimaryHDU()
    keywords = {"NODE": 95.0, "INCL": 0.0, "FIELD0": field0, "NFIELDS": nfields, "CAMCOLS": camcols,
                "FILTERS": filters}
    for key, value in keywords.items():
        if key != drop_keyword:
            primary.header[key] = value
    hdus = [primary]
    fields = np.arange(field0, field0 + nfields, dtype=np.int32)
    for camcol in camcols.split():
        for band in filters.split():
            index = len(hdus)
            cols = [fits.Column(name="field", format="J", array=fields)]
            for k, name in enumerate(COLUMNS):
                values = 1000.0 * index + fields if name == "a" else np.full(nfields, 0.5 + k)
                cols.append(fits.Column(name=name, format="D", array=values))
            table = fits.BinTableHDU.from_columns(cols)
            table.header["FILTER"] = "x" if index == bad_filter_hdu else band
            table.header["CAMCOL"] = int(camcol)
            hdus.append(table)
    fits.HDUList(hdus).writeto(path)
    return path


@pytest.mark.parametrize(
    "camcol, band, hdu", [(1, "r", 1), (1, "g", 5), (2, "r", 6), (2, "u", 8), (2, "g", 10)]
)
def test_reader_selects_hdu_in_camera_row_order(tmp_path: Path, camcol: int, band: str, hdu: int) -> None:
    path = write_astrans(tmp_path / "asTrans.fit")
    transform = read_astrans(path, camcol, band, 13)
    assert transform.a == 1000.0 * hdu + 13
    assert transform.b == 1.5 and transform.d_row == (6.5, 7.5, 8.5, 9.5) and transform.nu_err == 22.5
    assert (transform.node, transform.incl) == (95.0, 0.0)


@pytest.mark.parametrize(
    "kwargs, args, message",
    [
        ({}, (1, "r", 10), "field 10 missing"),
        ({}, (1, "r", 16), "field 16 missing"),
        ({}, (3, "r", 12), "camcol 3 not in CAMCOLS"),
        ({}, (1, "y", 12), "filter 'y' not in FILTERS"),
        ({"drop_keyword": "NODE"}, (1, "r", 12), "keyword NODE missing"),
        ({"drop_keyword": "FILTERS"}, (1, "r", 12), "keyword FILTERS missing"),
        ({"bad_filter_hdu": 4}, (1, "z", 12), "HDU 4 holds camcol 1 filter x"),
    ],
)
def test_reader_errors_name_file_and_problem(tmp_path: Path, kwargs: dict, args: tuple, message: str) -> None:
    path = write_astrans(tmp_path / "asTrans.fit", **kwargs)
    with pytest.raises(InputError, match=message) as info:
        read_astrans(path, *args)
    assert str(info.value).startswith(f"{path}: ")


def test_reader_finds_the_row_by_its_field_column(tmp_path: Path) -> None:
    """Row field - FIELD0 holding another field: the row is looked up by the field column; a field no row holds
    is missing (MissingInputError, which make_exposure replaces by the fpC header WCS); two rows are an error."""
    path = write_astrans(tmp_path / "asTrans.fit")
    with fits.open(path, mode="update") as hdul:
        hdul[1].data["field"][2] = 99  # row of field 13 now claims field 99
    assert read_astrans(path, 1, "r", 99).a == 1000.0 + 13  # column a keeps the row's original field
    with pytest.raises(MissingInputError, match="field 13 missing from HDU 1"):
        read_astrans(path, 1, "r", 13)
    assert read_astrans(path, 1, "r", 14).a == 1000.0 + 14
    with fits.open(path, mode="update") as hdul:
        hdul[1].data["field"][3] = 99
    with pytest.raises(InputError, match="holds 2 rows of field 99"):
        read_astrans(path, 1, "r", 99)


@pytest.mark.parametrize("args", [(1, "r", 10), (1, "r", 16), (3, "r", 12)])
def test_reader_missing_field_or_camcol_is_a_missing_input(tmp_path: Path, args: tuple) -> None:
    path = write_astrans(tmp_path / "asTrans.fit")
    with pytest.raises(MissingInputError):
        read_astrans(path, *args)


def test_reader_missing_hdu_is_a_missing_input(tmp_path: Path) -> None:
    path = write_astrans(tmp_path / "asTrans.fit")
    with fits.open(path) as hdul:
        fits.HDUList(hdul[:8]).writeto(tmp_path / "short.fit")
    with pytest.raises(MissingInputError, match="HDU 8 .camcol 2 filter u. missing"):
        read_astrans(tmp_path / "short.fit", 2, "u", 12)


def test_reader_missing_or_corrupt_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read asTrans"):
        read_astrans(tmp_path / "nothing.fit", 4, "r", 300)
    (tmp_path / "junk.fit").write_text("not a FITS file")
    with pytest.raises(InputError, match="junk.fit: "):
        read_astrans(tmp_path / "junk.fit", 4, "r", 300)


# --- real data -------------------------------------------------------------------------------------


def astrans_path(demo_dir: Path, run: int) -> Path:
    return demo_dir / "input" / str(run) / "40" / "astrom" / f"asTrans-{run:06d}.fit"


@pytest.mark.slow
def test_real_astrans_values(demo_dir: Path) -> None:
    transform = read_astrans(astrans_path(demo_dir, 4192), 4, "r", 300)
    assert transform.a == pytest.approx(351.5676878839004, abs=1e-12)
    assert transform.f == pytest.approx(0.00011000439707052579, rel=1e-12)
    assert transform.d_col[3] == pytest.approx(2.8924867396698366e-10, rel=1e-12)
    assert (transform.node, transform.incl, transform.ri_cut) == (95.0, 0.0, 100.0)
    assert transform.airmass == pytest.approx(1.1872326113375384)


def load_reference(demo_dir: Path) -> dict[str, np.ndarray]:
    """id, coord.ra/dec and centroid.sdss.x/y of the 2013 output."""
    path = demo_dir / "detected-sources.txt.expected"
    with open(path) as stream:
        names = stream.readline().lstrip("#").split()
    wanted = ["coord.ra", "coord.dec", "centroid.sdss.x", "centroid.sdss.y"]
    columns = np.loadtxt(path, comments="#", usecols=[names.index(n) for n in wanted], unpack=True)
    table = dict(zip(wanted, columns, strict=True))
    table["id"] = np.loadtxt(path, comments="#", usecols=names.index("id"), dtype=np.int64)
    return table


@pytest.mark.slow
def test_transform_reproduces_2013_coordinates(demo_dir: Path) -> None:
    table = load_reference(demo_dir)
    exposure = table["id"] >> 26
    worst_half, best_zero, rows = 0.0, np.inf, 0
    for run, field, band in FRAMES:
        sel = exposure == ((run * 10 + FILTER_INDEX[band]) * 10 + 4) * 10000 + field
        assert sel.sum() > 50
        transform = read_astrans(astrans_path(demo_dir, run), 4, band, field)
        x, y = table["centroid.sdss.x"][sel], table["centroid.sdss.y"][sel]
        ra, dec = transform.pixel_to_sky(x, y)
        worst_half = max(worst_half, angular_distance_mas(ra, dec, table["coord.ra"][sel],
                                                          table["coord.dec"][sel]).max())
        ra0, dec0 = transform.pixel_to_sky(x, y, offset=0.0)
        best_zero = min(best_zero, angular_distance_mas(ra0, dec0, table["coord.ra"][sel],
                                                        table["coord.dec"][sel]).min())
        rows += int(sel.sum())
    assert rows == len(exposure) == 4274
    assert worst_half <= 1.0
    assert best_zero > 100.0
