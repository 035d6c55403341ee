"""make-refcat (issue 13 item 2): the stars.fits layout from SkyServer-style CSV or FITS tables, the footprint
query, and the demo zero points and matches reproduced through a CSV round trip."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from click.testing import CliRunner

from processccd.cli.make_refcat import command
from processccd.errors import InputError
from processccd.refcat import ReferenceCatalog
from processccd.refcat_build import build_refcat, footprint_box, skyserver_sql

# astrometry_net_data/stars.fits, HDU 1 (sdss-inputs.md §6)
STARS_FITS_LAYOUT = [("id", "K"), ("sdssid", "K"), ("ra", "D"), ("dec", "D"), ("u", "D"), ("u_err", "D"),
                     ("g", "D"), ("g_err", "D"), ("r", "D"), ("r_err", "D"), ("i", "D"), ("i_err", "D"),
                     ("z", "D"), ("z_err", "D"), ("starnotgal", "K")]
SKYSERVER_NAMES = (["objID", "ra", "dec", "type"] + [f"psfMag_{b}" for b in "ugriz"]
                   + [f"psfMagErr_{b}" for b in "ugriz"])


def skyserver_csv(path: Path, rows: list[list[object]]) -> Path:
    """A CSV as SkyServer's SQL search writes it: a '#Table1' line, the column names, the rows."""
    lines = ["#Table1", ",".join(SKYSERVER_NAMES)] + [",".join(repr(v) if isinstance(v, float) else str(v)
                                                                for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def row(objid: int, ra: float, dec: float, kind: int = 6, r: float = 18.0) -> list[object]:
    return [objid, ra, dec, kind, 19.5, 18.5, r, 17.8, 17.6, 0.03, 0.01, 0.01, 0.01, 0.02]


def test_csv_becomes_the_stars_fits_layout(tmp_path: Path) -> None:
    rows = [row(587731186736562387, 350.3, 0.27), row(587731186736562388, 0.1, -0.5, kind=3),  # a galaxy
            row(587731186736562387, 350.3, 0.27),  # duplicate objID
            row(587731186736562390, 359.99, 0.1, r=-9999.0)]  # r not measured
    rows[3][11] = -9999.0  # psfMagErr_r
    csv = skyserver_csv(tmp_path / "result.csv", rows)
    result = CliRunner().invoke(command, [str(csv), "-o", str(tmp_path / "refcat.fits")])
    assert result.exit_code == 0, result.output
    assert "wrote 2 objects" in result.output and "1 not stars dropped, 1 duplicate" in result.output
    with fits.open(tmp_path / "refcat.fits") as hdul:
        assert len(hdul) == 2 and hdul[0].header["NAXIS"] == 0
        assert list(zip(hdul[1].columns.names, hdul[1].columns.formats, strict=True)) == STARS_FITS_LAYOUT
        data = hdul[1].data
        assert list(data["id"]) == [1, 2] and list(data["sdssid"]) == [587731186736562387, 587731186736562390]
        assert list(data["starnotgal"]) == [1, 1]
        assert data["r"][0] == 18.0 and math.isnan(data["r"][1]) and math.isnan(data["r_err"][1])
        assert data["ra"][1] == 359.99 and data["g_err"][0] == 0.01
    catalogue = ReferenceCatalog.read(tmp_path / "refcat.fits", "r")  # the pipeline reads it
    assert len(catalogue) == 2 and catalogue.is_star.all()


def test_all_types_keeps_galaxies_flagged(tmp_path: Path) -> None:
    csv = skyserver_csv(tmp_path / "result.csv", [row(1, 10.0, 0.0), row(2, 10.1, 0.0, kind=3)])
    table, summary = build_refcat([csv], all_types=True)
    assert list(table["starnotgal"]) == [1, 0] and summary.n_not_star == 1


def test_fits_input_with_stars_fits_names_and_negative_ra(tmp_path: Path) -> None:
    source = Table({"id": [7, 9], "sdssid": [11, 12], "ra": [-9.5, -6.25], "dec": [0.5, -1.0],
                    **{b: [18.0, 19.0] for b in "ugriz"}, **{f"{b}_err": [0.01, 0.02] for b in "ugriz"},
                    "starnotgal": [1, 1]})
    source.write(tmp_path / "in.fits")
    table, _ = build_refcat([tmp_path / "in.fits"])
    assert list(table["id"]) == [7, 9] and list(table["ra"]) == [350.5, 353.75]


def test_missing_column_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("objID,ra,dec\n1,10.0,0.0\n")
    with pytest.raises(InputError, match="bad.csv: no column psfmag_u or u"):
        build_refcat([tmp_path / "bad.csv"])
    result = CliRunner().invoke(command, [str(tmp_path / "bad.csv"), "-o", str(tmp_path / "out.fits")])
    assert result.exit_code == InputError.exit_code
    assert result.output.startswith("make-refcat: error: ") and not (tmp_path / "out.fits").exists()


def test_footprint_query() -> None:
    header = fits.Header({"CTYPE1": "RA---TAN", "CTYPE2": "DEC--TAN", "CRPIX1": 1024.5, "CRPIX2": 744.5,
                          "CRVAL1": 0.05, "CRVAL2": 0.1, "CD1_1": 0.0, "CD1_2": 1.1e-4, "CD2_1": 1.1e-4,
                          "CD2_2": 0.0})
    ra_min, ra_max, dec_min, dec_max = footprint_box(header, margin_arcmin=1.0)
    # rows (RA) span 1489 x 0.396" = 0.1638 deg, columns (Dec) 2048 x 0.396" = 0.2253 deg, + 1' each side
    assert ra_min == pytest.approx((0.05 - 0.0819 - 1 / 60) % 360, abs=1e-4) and ra_min > 359
    assert ra_max == pytest.approx(0.05 + 0.0819 + 1 / 60, abs=1e-4)
    assert (dec_min, dec_max) == pytest.approx((0.1 - 0.1126 - 1 / 60, 0.1 + 0.1126 + 1 / 60), abs=1e-4)
    sql = skyserver_sql(ra_min, ra_max, dec_min, dec_max)
    assert "FROM Star" in sql and f"(ra >= {ra_min:.5f} OR ra <= {ra_max:.5f})" in sql
    assert "psfMagErr_z" in sql and "psfMag_r < 21" in sql


# --- the demo through make-refcat -------------------------------------------------------------------------
ROUND_TRIP_FRAMES = [("4192", "r", "300"), ("6377", "u", "399")]


def _process(demo_dir: Path, output: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command_line = [sys.executable, "-c", "from processccd.cli.process_ccd import main; main()",
                    str(demo_dir / "input"), "--output", str(output), "-j", "1", *args]
    for run, band, field in ROUND_TRIP_FRAMES:
        command_line += ["--id", f"run={run} filter={band} camcol=4 field={field}"]
    return subprocess.run(command_line, capture_output=True, text=True, timeout=600)


def _product(output: Path, kind: str, run: str, band: str, field: str) -> Path:
    suffix = "fits"
    return (output / "sci-results" / run / "4" / band / kind
            / f"{kind}-{int(run):06d}-{band}4-{int(field):04d}.{suffix}")


@pytest.mark.slow
def test_demo_layout_and_csv_round_trip(demo_dir: Path, demo_output: Path, tmp_path: Path) -> None:
    """stars.fits rows written as a SkyServer CSV -> make-refcat -> --refcat: the same zero points and matches."""
    with fits.open(demo_dir / "astrometry_net_data" / "stars.fits") as hdul:
        assert list(zip(hdul[1].columns.names, hdul[1].columns.formats, strict=True)) == STARS_FITS_LAYOUT
        stars = hdul[1].data
        rows = [[int(s["sdssid"]), float(s["ra"]) % 360.0, float(s["dec"]), 6,
                 *(float(s[b]) for b in "ugriz"), *(float(s[f"{b}_err"]) for b in "ugriz")] for s in stars]
    csv = skyserver_csv(tmp_path / "stars.csv", rows)
    refcat = tmp_path / "refcat.fits"
    assert CliRunner().invoke(command, [str(csv), "-o", str(refcat)]).exit_code == 0
    done = _process(demo_dir, tmp_path / "output", "--refcat", str(refcat))
    assert done.returncode == 0, done.stderr[-2000:]
    for frame in ROUND_TRIP_FRAMES:
        with fits.open(_product(demo_output, "calexp", *frame)) as a, \
                fits.open(_product(tmp_path / "output", "calexp", *frame)) as b:
            assert b[0].header["ZPSOURCE"] == "photocal"
            assert b[0].header["MAGZERO"] == a[0].header["MAGZERO"]
            assert b[0].header["ZPNSTARS"] == a[0].header["ZPNSTARS"]
        matches = [Table.read(_product(root, "icMatch", *frame)) for root in (demo_output, tmp_path / "output")]
        assert len(matches[0]) >= 10
        for column in ("source.id", "ref.ra", "ref.dec", "ref.mag", "ref.mag.err", "distance"):
            np.testing.assert_array_equal(matches[0][column], matches[1][column])


def test_refcat_option_sets_the_catalogue_path(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "from processccd.cli.process_ccd import main; main()",
                           "--refcat", "mine.fits", "--show-config"], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"path: {tmp_path.resolve() / 'mine.fits'}" in done.stdout  # absolute: workers may run elsewhere
