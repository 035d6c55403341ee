"""gen-registry: the 2013 registry reproduced from the fpC headers, taiObs, header reading, atomic writes."""

from __future__ import annotations

import gzip
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from fault_data import mirror_input
from processccd import gen_registry as gen
from processccd.errors import InputError
from processccd.registry import MAPPER_FILE, REGISTRY_FILE

RAW = "SELECT run, rerun, filter, camcol, field, taiObs, strip FROM raw ORDER BY run, rerun, camcol, field, filter"


def _rows(path: Path, query: str = RAW) -> list[tuple]:
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def _schema(path: Path) -> dict[str, list[tuple]]:
    """Columns of each table, and each index's table, uniqueness and columns."""
    schema: dict[str, list[tuple]] = {}
    for (table,) in _rows(path, "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
        schema[table] = [row[1:] for row in _rows(path, f"PRAGMA table_info({table})")]
        for index in _rows(path, f"PRAGMA index_list({table})"):
            columns = [row[2] for row in _rows(path, f"PRAGMA index_info({index[1]})")]
            schema[f"index {index[1]}"] = [(table, index[2], *columns)]
    return schema


@pytest.fixture
def demo_copy(demo_dir: Path, tmp_path: Path) -> Path:
    """The demo input repository (files linked) without its registry and mapper."""
    repo = mirror_input(demo_dir / "input", tmp_path / "input")
    (repo / REGISTRY_FILE).unlink()
    (repo / MAPPER_FILE).unlink()
    return repo


def test_demo_registry_is_reproduced_row_for_row(demo_dir, demo_copy):
    shipped = demo_dir / "input" / REGISTRY_FILE
    result = gen.gen_registry(demo_copy)
    assert (result.frames, result.headers_read, result.errors) == (10, 10, [])
    made = demo_copy / REGISTRY_FILE
    assert _rows(made) == _rows(shipped)  # taiObs strings to the last digit, strip with its trailing blanks
    assert len(_rows(shipped)) == 10
    assert _schema(made) == _schema(shipped)
    tiles = ("SELECT run, rerun, filter, camcol, field, skyTile FROM raw JOIN raw_skyTile USING (id) "
             "ORDER BY run, filter, skyTile")
    assert _rows(made, tiles) == _rows(shipped, tiles)  # by frame: the ids themselves follow insertion order
    assert len(_rows(shipped, tiles)) == 20
    assert (demo_copy / MAPPER_FILE).read_bytes() == (demo_dir / "input" / MAPPER_FILE).read_bytes()
    assert not [p for p in demo_copy.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("date_obs, taihms, expected", [
    ("2003-10-19", "04:43:34.68", "2003-10-19T04:43:02.679999999"),  # TAI-UTC 32 s; 0.68 s truncated from float
    ("2006-09-20", "05:58:59.43", "2006-09-20T05:58:26.429999999"),  # 33 s
    ("2006-09-20", "06:01:22.73", "2006-09-20T06:00:49.730000000"),
    ("2009-01-01", "00:00:40.0", "2009-01-01T00:00:06.000000000"),  # 34 s after the leap second of 2008-12-31
    ("2009-01-01", "00:00:20.0", "2008-12-31T23:59:47.000000000"),  # 33 s before it, the day before in UTC
    ("20/09/98", "05:00:00.5", "1998-09-20T04:59:29.500000000"),  # DD/MM/YY of 19YY; 31 s in 1998
])
def test_tai_obs_is_the_utc_instant_with_truncated_nanoseconds(date_obs, taihms, expected):
    assert gen.tai_obs(date_obs, taihms) == expected


def _card(key: str, value: str) -> bytes:
    return f"{key:<8}= {value:<70}".encode()[:80]


def _fits_header(cards: list[bytes], end: bool = True) -> bytes:
    data = b"".join(cards) + (b"END".ljust(80) if end else b"")
    return data + b" " * (-len(data) % 2880)


def _write_fpc(path: Path, stripe: str = "82", strip: str = "'N       '", extra: int = 0, end: bool = True,
               gz: bool = True) -> None:
    """A synthetic fpC: primary header (with `extra` incompressible COMMENT-like cards) and 2880 data bytes."""
    import random

    rng = random.Random(0)
    cards = [_card("SIMPLE", "T"), _card("BITPIX", "16"), _card("NAXIS", "0"),
             *(_card(f"X{i:07d}", "'" + "".join(rng.choice("ABCDEFGHIJKLMNOP") for _ in range(60)) + "'")
               for i in range(extra)),
             _card("DATE-OBS", "'2005-11-30'"), _card("TAIHMS", "'01:02:03.25'"), _card("STRIPE", stripe),
             _card("STRIP", strip)]
    data = _fits_header(cards, end) + bytes(2880)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if gz else data)


def _frame_path(repo: Path, run: int, rerun: int, filter_: str, camcol: int, field: int) -> Path:
    return repo / f"{run}/{rerun}/corr/{camcol}/fpC-{run:06d}-{filter_}{camcol}-{field:04d}.fit.gz"


def test_header_cards_are_read_up_to_end_across_chunks(tmp_path):
    path = tmp_path / "fpC.fit.gz"
    _write_fpc(path, extra=1000)  # ~80 kB of header that gzip cannot shrink below READ_CHUNK
    assert path.stat().st_size > 2 * gen.READ_CHUNK
    cards = gen.read_primary_cards(path)
    assert cards["STRIP"].startswith("'N       '") and "X0000999" in cards
    row = gen.raw_row(path, None)
    assert (row.tai_obs, row.strip) == ("2005-11-30T01:01:31.250000000", "82N       ")  # 32 s in 2005
    assert row.sky_tiles == ()  # no WCS in this header: listed without tiles
    plain = tmp_path / "fpC.fit"
    _write_fpc(plain, gz=False)
    assert gen.raw_row(plain, None).strip == "82N       "


@pytest.mark.parametrize("damage, message", [
    (lambda p: _write_fpc(p, end=False), "ends inside the primary header"),
    (lambda p: p.write_bytes(gzip.compress(b"SIMPLE  =  T" * 10)[:30]), "ends inside the primary header"),
    (lambda p: p.write_bytes(b"\x1f\x8b" + bytes(100)), "cannot read fpC file"),
    (lambda p: _write_fpc(p, stripe="'82'"), "keyword STRIPE missing from the primary header or not an integer"),
    (lambda p: _write_fpc(p, strip="82"), "keyword STRIP missing from the primary header or not a string"),
])
def test_an_unreadable_header_is_an_error_naming_the_file(tmp_path, damage, message):
    path = tmp_path / "fpC-000001-u1-0001.fit.gz"
    damage(path)
    with pytest.raises(InputError, match=message) as raised:
        gen.raw_row(path, None)
    assert str(raised.value).startswith(str(path))


def test_bad_frame_is_left_out_and_named_by_the_cli(tmp_path):
    repo = tmp_path / "input"
    for field in (11, 12, 13):
        _write_fpc(_frame_path(repo, 5, 40, "r", 2, field))
    _frame_path(repo, 5, 40, "r", 2, 12).write_bytes(b"not FITS at all")
    command = [sys.executable, "-c", "from processccd.cli.gen_registry import main; main()", str(repo)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == InputError.exit_code
    errors = [line for line in result.stderr.splitlines() if line.startswith("gen-registry: error:")]
    assert len(errors) == 1 and "fpC-000005-r2-0012.fit.gz: cannot read fpC file" in errors[0], result.stderr
    assert [row[4] for row in _rows(repo / REGISTRY_FILE)] == [11, 13]


def test_the_higher_rerun_of_a_frame_present_twice_is_listed(tmp_path, caplog):
    repo = tmp_path / "input"
    _write_fpc(_frame_path(repo, 5, 40, "g", 1, 100))
    _write_fpc(_frame_path(repo, 5, 41, "g", 1, 100))
    _write_fpc(_frame_path(repo, 5, 40, "g", 1, 101))
    gen.gen_registry(repo)
    assert sorted((row[4], row[1]) for row in _rows(repo / REGISTRY_FILE)) == [(100, 41), (101, 40)]
    assert "present in reruns 40 and 41" in caplog.text


def test_update_keeps_the_listed_rows_and_their_tiles(demo_dir, demo_copy):
    (demo_copy / REGISTRY_FILE).write_bytes((demo_dir / "input" / REGISTRY_FILE).read_bytes())
    result = gen.gen_registry(demo_copy, update=True)
    assert (result.frames, result.headers_read) == (10, 0)
    query = "SELECT run, filter, taiObs, strip, skyTile FROM raw JOIN raw_skyTile USING (id) ORDER BY 1, 2, 5"
    assert _rows(demo_copy / REGISTRY_FILE, query) == _rows(demo_dir / "input" / REGISTRY_FILE, query)


def test_update_reads_only_the_new_headers(tmp_path):
    repo = tmp_path / "input"
    for field in (1, 2):
        _write_fpc(_frame_path(repo, 7, 40, "i", 3, field))
    assert gen.gen_registry(repo).headers_read == 2
    _write_fpc(_frame_path(repo, 7, 40, "i", 3, 3))
    _frame_path(repo, 7, 40, "i", 3, 1).unlink()
    result = gen.gen_registry(repo, update=True)
    assert (result.frames, result.headers_read) == (2, 1)
    assert [row[4] for row in _rows(repo / REGISTRY_FILE)] == [2, 3]
    assert gen.gen_registry(repo).headers_read == 2  # without --update every header is read again


def test_a_failed_write_leaves_the_old_registry_and_no_temporary(demo_dir, demo_copy, monkeypatch):
    before = (demo_dir / "input" / REGISTRY_FILE).read_bytes()
    (demo_copy / REGISTRY_FILE).write_bytes(before)
    monkeypatch.setattr(gen, "INDICES", (*gen.INDICES, "CREATE INDEX broken ON no_such_table (x)"))
    with pytest.raises(sqlite3.OperationalError):
        gen.gen_registry(demo_copy)
    assert (demo_copy / REGISTRY_FILE).read_bytes() == before
    assert not [p for p in demo_copy.iterdir() if p.name.startswith(".")]


def test_generated_registry_serves_process_ccd_show_ids(tmp_path):
    repo = tmp_path / "input"
    for filter_ in "uz":
        _write_fpc(_frame_path(repo, 9, 40, filter_, 6, 77))
    gen.gen_registry(repo)
    command = [sys.executable, "-c", "from processccd.cli.process_ccd import main; main()", str(repo),
               "--id", "run=9", "--show-ids"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == ["run=9 rerun=40 camcol=6 field=77 filter=u",
                                              "run=9 rerun=40 camcol=6 field=77 filter=z"]
    assert "from registry" in result.stdout.splitlines()[0]


@pytest.mark.parametrize("setup", ["missing", "no frames"])
def test_an_input_without_frames_is_one_error_and_no_registry(tmp_path, setup):
    repo = tmp_path / "input"
    if setup == "no frames":
        (repo / "4192/40/corr/4").mkdir(parents=True)
    command = [sys.executable, "-c", "from processccd.cli.gen_registry import main; main()", str(repo)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == InputError.exit_code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gen-registry: error: {repo}: "), lines
    assert not (repo / REGISTRY_FILE).exists()
