"""Tests of the numpy FITS decoding behind the SDSS readers: header values, binary tables, structure checks."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from processccd.errors import InputError
from processccd.sdss.fits import HduSpan, open_fits, parse_header

DEMO_FILES = [
    "4192/40/corr/4/fpC-004192-z4-0300.fit.gz",
    "4192/40/objcs/4/fpM-004192-z4-0300.fit",
    "4192/40/calibChunks/4/tsField-004192-4-40-0300.fit",
    "4192/40/objcs/4/psField-004192-4-0300.fit",
    "4192/40/astrom/asTrans-004192.fit",
]


def write_table_file(path: Path) -> Path:
    """A FITS file with one binary table of every column kind the decoder reads, and a variable-length one."""
    n = 7
    rng = np.random.default_rng(3)
    columns = [
        fits.Column(name="b", format="B", array=rng.integers(0, 256, n, dtype=np.uint8)),
        fits.Column(name="i", format="I", array=rng.integers(-(2**15), 2**15, n, dtype=np.int16)),
        fits.Column(name="j", format="3J", array=rng.integers(-(2**31), 2**31, (n, 3), dtype=np.int64)),
        fits.Column(name="k", format="K", array=rng.integers(-(2**62), 2**62, n, dtype=np.int64)),
        fits.Column(name="flag", format="L", array=rng.random(n) < 0.5),
        fits.Column(name="text", format="12A", array=[f"name {i}" for i in range(n)]),
        fits.Column(name="e", format="25E", dim="(5,5)", array=rng.normal(size=(n, 5, 5)).astype(np.float32)),
        fits.Column(name="d", format="D", array=rng.normal(size=n)),
        fits.Column(name="pe", format="PE()", array=np.array(
            [rng.normal(size=i).astype(np.float32) for i in range(n)], dtype=object)),
        fits.Column(name="pb", format="PB()", array=np.array(
            [rng.integers(0, 256, 3 * i, dtype=np.uint8) for i in range(n)], dtype=object)),
    ]
    primary = fits.PrimaryHDU()
    primary.header["EXPTIME"] = "53.907456"
    primary.header["NOTE"] = "it's quoted"
    primary.header["FLAG"] = True
    primary.header["SCALE"] = (1.5e-3, "a float")
    fits.HDUList([primary, fits.BinTableHDU.from_columns(columns)]).writeto(path)
    return path


def test_table_columns_equal_astropy(tmp_path: Path) -> None:
    path = write_table_file(tmp_path / "table.fit")
    with fits.open(path) as hdul, open_fits(path, "test") as fits_file:
        expected = hdul[1].data
        table = fits_file.table(1, "the table")
        assert table.names == tuple(expected.columns.names)
        assert len(table) == len(expected)
        for name in ("b", "i", "j", "k", "d"):
            np.testing.assert_array_equal(table.column(name), expected[name])
        np.testing.assert_array_equal(table.column("e").reshape(-1, 5, 5), expected["e"])
        assert table.column("text").tolist() == list(expected["text"])
        for name in ("pe", "pb"):
            values, counts = table.variable_arrays(name)
            assert counts.tolist() == [len(row) for row in expected[name]]
            np.testing.assert_array_equal(values, np.concatenate(list(expected[name])))
        with pytest.raises(ValueError, match="not a fixed-size"):
            table.column("flag")
        with pytest.raises(ValueError, match="not a variable-length"):
            table.variable_arrays("d")


def test_header_values_equal_astropy(tmp_path: Path) -> None:
    path = write_table_file(tmp_path / "table.fit")
    with fits.open(path) as hdul, open_fits(path, "test") as fits_file:
        for index in range(len(hdul)):
            header = fits_file.header(index)
            for card in hdul[index].header.cards:
                if card.keyword and card.keyword not in ("COMMENT", "HISTORY", ""):
                    assert header[card.keyword] == card.value and type(header[card.keyword]) is type(card.value)


@pytest.mark.slow
@pytest.mark.parametrize("relpath", DEMO_FILES)
def test_demo_headers_equal_astropy(demo_dir: Path, relpath: str) -> None:
    path = demo_dir / "input" / relpath
    with fits.open(path) as hdul, open_fits(path, "demo") as fits_file:
        assert len(fits_file) == len(hdul)
        for index in range(len(hdul)):
            header = fits_file.header(index)
            for card in hdul[index].header.cards:
                if card.keyword and card.keyword not in ("COMMENT", "HISTORY") and card.keyword in header:
                    assert header[card.keyword] == card.value, (index, card.keyword)


def test_inconsistent_tables_are_input_errors(tmp_path: Path) -> None:
    path = write_table_file(tmp_path / "table.fit")
    with open_fits(path, "test") as fits_file, pytest.raises(InputError, match="HDU 0 missing or not a binary"):
        fits_file.table(0, "the primary")
    with open_fits(path, "test") as fits_file, pytest.raises(InputError, match="HDU 2 missing or not a binary"):
        fits_file.table(2, "nothing")
    with fits.open(path) as hdul:
        hdul[1].header["THEAP"] = 10**6
        stream = io.BytesIO()
        hdul.writeto(stream)
    (tmp_path / "heap.fit").write_bytes(stream.getvalue())
    with open_fits(tmp_path / "heap.fit", "test") as fits_file, pytest.raises(InputError, match="disagree"):
        fits_file.table(1, "the table")


def test_truncated_and_trailing_bytes(tmp_path: Path) -> None:
    path = write_table_file(tmp_path / "table.fit")
    raw = path.read_bytes()
    with fits.open(path) as hdul:
        table_data_start = hdul.fileinfo(1)["datLoc"]
    (tmp_path / "padded.fit").write_bytes(raw + b"\0" * 100)
    with open_fits(tmp_path / "padded.fit", "test") as fits_file:
        assert len(fits_file) == 2
    for name, content, message in [("short.fit", raw[: table_data_start + 10], "truncated: HDU 1 has 10 of"),
                                   ("half-header.fit", raw[:2880 + 1000], "no complete header at byte 2880"),
                                   ("text.fit", b"not FITS\n" * 400, "no complete header at byte 0")]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError, match=message), open_fits(tmp_path / name, "test"):
            pass


def test_parse_header_skips_cards_without_value() -> None:
    cards = ["SIMPLE  =                    T", "COMMENT   = not a value", "EMPTY   =", "BAD     = 1.2.3",
             "CPLX    = (1.0, 2.0)", "NAXIS   =                    0 / no data", "NAXIS   = 5", "END"]
    raw = "".join(card.ljust(80) for card in cards).encode().ljust(2880, b" ")
    header = parse_header(raw, HduSpan(header_start=0, header_end=80 * 7, data_start=2880, data_size=0))
    assert header == {"SIMPLE": True, "EMPTY": None, "BAD": None, "CPLX": None, "NAXIS": 0}
