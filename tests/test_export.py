"""Tests of the detected-sources list format: printing rules, writing, reading, byte-exact round trip."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from processccd.errors import InputError
from processccd.source_list import (
    BOOL_COLUMNS,
    COLUMNS,
    FLOAT32_COLUMNS,
    HEADER,
    column_kind,
    read_list,
    write_list,
)
from reference_impl.source_list import format_value

# The header and the first two data rows of the expected list (exercise every printing rule).
EXPECTED_HEAD = HEADER + "\n" + (
    "281323062375219221 351.570546978 0.126243049656 False True False False False False False 1232.0 31.0 "
    "nan nan 1231.80666658 31.725054147 nan nan 5.4025226414 -1.16608472668 29.9731680674 1.2476 3.4899 "
    "38.4015 False 762.787206361 78.8630862075 215.255667762 25.0274588456 567.67251176 51.1792062486 "
    "695.209308547 51.9636986956 2140.4908551 157.867577803 nan nan 1.0 0.987684175612 0.00168473107372\n"
    "281323062375219222 351.571697548 0.193947924582 False False False True True False False 1847.05659868 "
    "41.4264061405 4.40815e-05 4.88769e-05 1847.06020231 41.4401334711 nan nan 2.06013051367 "
    "0.0869478325948 2.26280579145 0.000343841 0.00018914 0.000414823 False 141632.789695 681.628059662 "
    "138081.73369 431.96654989 139714.198386 299.204580969 139924.845762 248.202037057 139917.026707 "
    "248.188167429 139931.596951 248.214012478 0.0 0.988002762388 0.00168473107372\n"
)


def test_columns_match_the_expected_header() -> None:
    assert len(COLUMNS) == 40
    assert HEADER.startswith("#id coord.ra coord.dec flags.negative")
    assert HEADER.endswith("classification.extendedness aperturecorrection aperturecorrection.err")
    assert len(BOOL_COLUMNS) == 8 and len(FLOAT32_COLUMNS) == 5
    assert column_kind("id") == "id"
    assert column_kind("shape.sdss.flags") == "bool"
    assert column_kind("shape.sdss.err.ixy") == "float32"
    assert column_kind("centroid.gaussian.err.xx") == "double"
    with pytest.raises(KeyError):
        column_kind("flux.kron")


@pytest.mark.parametrize(("value", "text"), [
    (1232.0, "1232.0"),
    (math.nan, "nan"),
    (-5.0, "-5.0"),
    (0.0, "0.0"),
    (1.0 / 3.0, "0.333333333333"),
    (351.57054697812345, "351.570546978"),
    (1e16, "1e+16"),
    (2.5e-05, "2.5e-05"),
    (123456789012.5, "123456789012.0"),
    (math.inf, "inf"),
])
def test_format_double_is_python2_str(value: float, text: str) -> None:
    assert format_value(value, "double") == text


@pytest.mark.parametrize(("value", "text"), [
    (4.408149e-05, "4.40815e-05"),
    (1.2476000785827637, "1.2476"),
    (3.0, "3.0"),
    (38.40149, "38.4015"),
    (0.000343841, "0.000343841"),
    (123456.7, "123457.0"),
    (1234567.0, "1.23457e+06"),
    (math.nan, "nan"),
])
def test_format_float32_is_six_significant_digits(value: float, text: str) -> None:
    assert format_value(value, "float32") == text


def test_format_bool_and_id() -> None:
    assert format_value(np.bool_(True), "bool") == "True"
    assert format_value(0, "bool") == "False"
    assert format_value(np.int64(281323062375219221), "id") == "281323062375219221"


def test_round_trip_of_the_embedded_rows_is_byte_identical(tmp_path: Path) -> None:
    path = tmp_path / "head.txt"
    path.write_text(EXPECTED_HEAD)
    table = read_list(path)
    assert len(table) == 2
    assert table["id"].dtype == np.int64 and table["id"][0] == 281323062375219221
    assert table["flags.badcentroid"].dtype == bool and table["flags.badcentroid"][0]
    assert table["centroid.sdss.err.xx"].dtype == np.float32
    assert math.isnan(table["centroid.sdss.err.xx"][0])
    out = io.StringIO()
    write_list(table, out)
    assert out.getvalue() == EXPECTED_HEAD


def test_write_accepts_row_mappings_and_structured_arrays(tmp_path: Path) -> None:
    path = tmp_path / "head.txt"
    path.write_text(EXPECTED_HEAD)
    table = read_list(path)
    rows = [{name: table[name][i] for name in COLUMNS} for i in range(len(table))]
    from_rows, from_array = io.StringIO(), io.StringIO()
    write_list(rows, from_rows)
    write_list(table.as_array(), from_array)
    assert from_rows.getvalue() == EXPECTED_HEAD
    assert from_array.getvalue() == EXPECTED_HEAD
    with pytest.raises(ValueError, match="flux.psf"):
        write_list([{k: v for k, v in rows[0].items() if k != "flux.psf"}], io.StringIO())


def test_float64_covariances_are_printed_from_their_float32_value() -> None:
    table = Table({name: [1.0] for name in COLUMNS})
    table["id"] = [7]
    for name in BOOL_COLUMNS:
        table[name] = [False]
    table["centroid.sdss.err.xx"] = [4.408149e-05]
    out = io.StringIO()
    write_list(table, out)
    row = out.getvalue().splitlines()[1].split()
    assert row[COLUMNS.index("centroid.sdss.err.xx")] == "4.40815e-05"
    assert row[COLUMNS.index("coord.ra")] == "1.0"


def test_write_list_prints_every_value_as_format_value() -> None:
    """The vectorised printing (one format per row, then '.0' on integral floats) equals `format_value`."""
    rng = np.random.default_rng(11)
    n = 300
    special = [0.0, -0.0, 1.0, -3.0, 1e11, 123456789012.0, 1e12, 1e16, -1e-5, 2.0000000000001, np.nan, np.inf,
               -np.inf, 5e-324, 1.5e300]
    table = Table()
    for name in COLUMNS:
        kind = column_kind(name)
        if kind == "id":
            table[name] = rng.integers(0, 2**62, n)
        elif kind == "bool":
            table[name] = rng.random(n) < 0.5
        else:
            values = rng.normal(size=n) * 10.0 ** rng.integers(-8, 14, n)
            integral = rng.random(n) < 0.2
            values[integral] = np.round(values[integral])
            values[: len(special)] = special
            values[len(special) : 2 * len(special)] = np.round(rng.normal(size=len(special)) * 1e4)
            with np.errstate(over="ignore"):  # 1.5e300 becomes inf in float32
                table[name] = values.astype(np.float32) if kind == "float32" else values
    out = io.StringIO()
    write_list(table, out)
    expected = [" ".join(format_value(table[name][i], column_kind(name)) for name in COLUMNS) for i in range(n)]
    assert out.getvalue().splitlines() == [HEADER, *expected]


@pytest.mark.parametrize(("content", "message"), [
    ("#id coord.ra\n1 2\n", "header"),
    (HEADER + "\n1 2 3\n", "line 2 has 3 fields"),
    (EXPECTED_HEAD.replace(" False True False", " False Yes False", 1), "not True/False"),
    (EXPECTED_HEAD.replace("351.570546978", "351.57x", 1), "coord.ra"),
    (EXPECTED_HEAD[1:], "header"),
])
def test_read_rejects_malformed_lists(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        read_list(path)


def test_read_missing_file_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="cannot read"):
        read_list(tmp_path / "absent.txt")


@pytest.mark.slow
def test_round_trip_of_the_expected_list_is_byte_identical(demo_dir: Path) -> None:
    path = demo_dir / "detected-sources.txt.expected"
    table = read_list(path)
    assert len(table) == 4274
    assert int(table["flags.badcentroid"].sum()) == 208
    out = io.StringIO()
    write_list(table, out)
    assert out.getvalue() == path.read_text()
