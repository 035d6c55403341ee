"""Tests of the source-table FITS I/O: the numpy writer against astropy's, and the numpy reader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from processccd.table import (
    EXTRA_SCHEMA,
    SOURCE_SCHEMA,
    Column,
    empty_columns,
    read_source_columns,
    read_source_table,
    write_source_table,
)

SCHEMA = SOURCE_SCHEMA + EXTRA_SCHEMA


def astropy_source_table(path: Path, columns: dict[str, np.ndarray], schema: list[Column],
                         header: dict[str, object]) -> None:
    """The table written through astropy.table (as processccd did before the numpy writer)."""
    table = Table()
    for col in schema:
        table[col.name] = np.asarray(columns[col.name], dtype=col.dtype)
        if col.unit:
            table[col.name].unit = col.unit
    hdu = fits.table_to_hdu(table)
    for i, col in enumerate(schema, start=1):
        hdu.header[f"TDOC{i}"] = col.doc[:68]
    for key, value in header.items():
        hdu.header[key] = value
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path, overwrite=True)


def random_columns(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    columns = empty_columns(n, SCHEMA)
    for col in SCHEMA:
        if col.dtype == "?":
            columns[col.name] = rng.random(n) < 0.5
        elif col.dtype.startswith("f"):
            values = rng.normal(size=n) * 10.0 ** rng.integers(-5, 8, size=n)
            values[rng.random(n) < 0.2] = np.nan
            columns[col.name] = values.astype(col.dtype)
        else:
            columns[col.name] = rng.integers(-(2**30), 2**30, size=n).astype(col.dtype)
    return columns


@pytest.mark.parametrize("n", [0, 1, 37, 500])
def test_writer_is_byte_identical_to_astropy(tmp_path: Path, n: int) -> None:
    columns = random_columns(n, seed=n)
    header = {"EXPID": 4192140300, "PCCDVER": "0.1.0"}
    write_source_table(tmp_path / "ours.fits", columns, SCHEMA, header)
    astropy_source_table(tmp_path / "astropy.fits", columns, SCHEMA, header)
    assert (tmp_path / "ours.fits").read_bytes() == (tmp_path / "astropy.fits").read_bytes()


def test_numpy_reader_matches_astropy(tmp_path: Path) -> None:
    columns = random_columns(123, seed=5)
    path = tmp_path / "src.fits"
    write_source_table(path, columns, SCHEMA, {"EXPID": 1})
    names = tuple(col.name for col in SCHEMA)
    ours = read_source_columns(path, names)
    theirs = read_source_table(path)
    for name in names:
        assert ours[name].dtype == theirs[name].dtype.newbyteorder("=")
        np.testing.assert_array_equal(ours[name], np.asarray(theirs[name]))
    assert read_source_columns(path, ("id",))["id"].dtype == np.int64


def test_numpy_reader_rejects_other_files(tmp_path: Path) -> None:
    path = tmp_path / "src.fits"
    write_source_table(path, random_columns(10, seed=1), SCHEMA, {})
    with pytest.raises(ValueError, match="missing"):
        read_source_columns(path, ("no.such.column",))
    (tmp_path / "short.fits").write_bytes(path.read_bytes()[:6000])
    with pytest.raises(ValueError, match="no END card"):
        read_source_columns(tmp_path / "short.fits", ("id",))
    (tmp_path / "no-rows.fits").write_bytes(path.read_bytes()[:-2880])
    with pytest.raises(ValueError, match="disagree"):
        read_source_columns(tmp_path / "no-rows.fits", ("id",))
    (tmp_path / "text.fits").write_bytes(b"not a FITS file\n" * 400)
    with pytest.raises(ValueError, match="END"):
        read_source_columns(tmp_path / "text.fits", ("id",))
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((2, 2)))]).writeto(tmp_path / "image.fits")
    with pytest.raises(ValueError, match="not a binary table"):
        read_source_columns(tmp_path / "image.fits", ("id",))
