"""Reference catalogue: reading with configurable columns, RA wrapping, path resolution, degraded inputs."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from processccd.butler import Butler
from processccd.dataid import DataId
from processccd.errors import InputError
from processccd.refcat import RefCatConfig, ReferenceCatalog, load_reference_catalog, resolve_catalog_path


def _write_catalog(path: Path, n: int = 3, **renamed: str) -> Path:
    table = Table()
    table[renamed.get("id", "id")] = np.arange(n, dtype=np.int64)
    table[renamed.get("ra", "ra")] = np.linspace(-10.0, -6.0, n)
    table[renamed.get("dec", "dec")] = np.linspace(-1.0, 1.0, n)
    table["g"] = np.linspace(15.0, 20.0, n)
    table["g_err"] = np.full(n, 0.02)
    table[renamed.get("star", "starnotgal")] = np.array([1, 0, 1][:n], dtype=np.int16)
    table.write(path, format="fits", overwrite=True)
    return path


def test_read_wraps_ra_and_takes_the_filter_columns(tmp_path: Path) -> None:
    catalog = ReferenceCatalog.read(_write_catalog(tmp_path / "stars.fits"), "g")
    np.testing.assert_allclose(catalog.ra, [350.0, 352.0, 354.0])
    np.testing.assert_allclose(catalog.mag, [15.0, 17.5, 20.0])
    np.testing.assert_array_equal(catalog.is_star, [True, False, True])
    assert catalog.ids.dtype == np.int64 and len(catalog) == 3


def test_configurable_column_names(tmp_path: Path) -> None:
    path = _write_catalog(tmp_path / "other.fits", id="objid", ra="RA_DEG", star="is_star")
    config = RefCatConfig(id_column="objid", ra_column="RA_DEG", star_column="is_star")
    assert len(ReferenceCatalog.read(path, "g", config)) == 3
    with pytest.raises(InputError, match="RA_DEG|objid|is_star|ra"):
        ReferenceCatalog.read(path, "g")


def test_missing_filter_column_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="r_err"):
        ReferenceCatalog.read(_write_catalog(tmp_path / "stars.fits"), "r")


def test_missing_or_empty_catalogue_degrades_with_a_warning(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert load_reference_catalog(tmp_path / "absent.fits", "g") is None
    assert "absent.fits" in caplog.text
    caplog.clear()
    empty = tmp_path / "empty.fits"
    Table({"id": np.zeros(0, np.int64), "ra": np.zeros(0), "dec": np.zeros(0), "g": np.zeros(0),
           "g_err": np.zeros(0), "starnotgal": np.zeros(0, np.int16)}).write(empty, format="fits")
    with caplog.at_level(logging.WARNING):
        assert load_reference_catalog(empty, "g") is None
    assert "empty" in caplog.text


def test_path_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "repo" / "input").mkdir(parents=True)
    (tmp_path / "repo" / "astrometry_net_data").mkdir()
    beside = _write_catalog(tmp_path / "repo" / "astrometry_net_data" / "stars.fits")
    monkeypatch.chdir(tmp_path)
    relative = "astrometry_net_data/stars.fits"
    assert resolve_catalog_path(relative, tmp_path / "repo" / "input") == beside.resolve()
    (tmp_path / "astrometry_net_data").mkdir()
    here = _write_catalog(tmp_path / "astrometry_net_data" / "stars.fits")
    assert resolve_catalog_path(relative, tmp_path / "repo" / "input") == here.resolve()
    assert resolve_catalog_path(beside, tmp_path) == beside


@pytest.mark.slow
def test_stars_inside_the_demo_frames(demo_dir: Path) -> None:
    """sdss-inputs.md §6: stars of stars.fits inside the trimmed frames (4192: 94 93 94 93 93)."""
    from processccd.tasks.make_exposure import make_exposure

    butler = Butler(demo_dir / "input")
    expected = {"u": 94, "g": 93, "r": 94, "i": 93, "z": 93}
    for filter_name, count in expected.items():
        exposure = make_exposure(butler, DataId(run=4192, camcol=4, field=300, filter=filter_name, rerun=40))
        catalog = ReferenceCatalog.read(demo_dir / "astrometry_net_data" / "stars.fits", filter_name)
        inside, x, y = catalog.in_frame(exposure.wcs, 2048, 1361, 0.0)
        assert len(inside) == count, filter_name
        assert np.all((x >= -0.5) & (x <= 2047.5) & (y >= -0.5) & (y <= 1360.5))
