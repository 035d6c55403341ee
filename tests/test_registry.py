"""The input registry (registry.sqlite3): id expansion by query, --show-ids, every kind of unusable registry."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from processccd.butler import Butler
from processccd.dataid import DataId, parse_id_expression
from processccd.errors import DataIdError, InputError
from processccd.registry import REGISTRY_FILE, Registry, RegistryError

SHIPPED = "input/registry.sqlite3"
UGRIZ = ("u", "g", "r", "i", "z")


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from processccd.cli.process_ccd import main; main()", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


@pytest.fixture
def registry_repo(demo_dir: Path, tmp_path: Path) -> Path:
    """An input repository holding only the 2013 registry: no frame files at all."""
    repo = tmp_path / "input"
    repo.mkdir()
    shutil.copyfile(demo_dir / SHIPPED, repo / REGISTRY_FILE)
    return repo


def _resolve(repo: Path, expression: str) -> list[DataId]:
    return Butler(repo).resolve(parse_id_expression(expression))


def test_keys_left_out_are_filled_from_the_registry(registry_repo):
    # the 2013 registry lists run 4192 camcol 4 field 300 and run 6377 camcol 4 field 399, ugriz, rerun 40
    butler = Butler(registry_repo)
    ids = butler.resolve(parse_id_expression("run=4192"))
    assert ids == [DataId(run=4192, camcol=4, field=300, filter=f, rerun=40) for f in UGRIZ]
    assert butler.id_source == f"registry {registry_repo / REGISTRY_FILE}"
    assert _resolve(registry_repo, "run=6377 filter=r") == [DataId(6377, 4, 399, "r", 40)]
    assert _resolve(registry_repo, "field=399^300 filter=z") == [DataId(6377, 4, 399, "z", 40),  # in the
                                                                  DataId(4192, 4, 300, "z", 40)]  # order given
    assert len(_resolve(registry_repo, "camcol=4")) == 10


def test_an_id_the_registry_does_not_list_is_an_error_naming_it(registry_repo):
    for expression in ("run=4193", "run=4192 field=301", "run=4192 filter=g camcol=4 field=300 rerun=41"):
        with pytest.raises(DataIdError, match=f"matches no frame in the registry {registry_repo}"):
            _resolve(registry_repo, expression)


def test_the_registry_decides_not_the_directories(registry_repo):
    stray = registry_repo / "4192/40/corr/5/fpC-004192-u5-0300.fit.gz"  # on disk, not in the registry
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"")
    assert all(d.camcol == 4 for d in _resolve(registry_repo, "run=4192"))
    (registry_repo / REGISTRY_FILE).unlink()
    butler = Butler(registry_repo)
    assert butler.resolve(parse_id_expression("run=4192")) == [DataId(4192, 5, 300, "u", 40)]
    assert butler.id_source == f"directory scan of {registry_repo}"


def test_registry_is_opened_read_only_and_left_unchanged(registry_repo):
    path = registry_repo / REGISTRY_FILE
    before = path.read_bytes()
    with Registry(path) as registry, pytest.raises(sqlite3.OperationalError, match="readonly"):
        registry._conn.execute("DELETE FROM raw")
    _resolve(registry_repo, "run=4192")
    assert path.read_bytes() == before
    assert sorted(p.name for p in registry_repo.iterdir()) == [REGISTRY_FILE]  # no journal left beside it


def test_values_are_bound_parameters_not_sql(registry_repo):
    with Registry(registry_repo / REGISTRY_FILE) as registry:
        assert registry.frames({"filter": "u' OR '1'='1"}) == []
        assert registry.frames({"run": "4192 OR 1=1"}) == []
        assert len(registry.frames({"filter": "u"})) == 2


def test_a_path_with_uri_characters_is_opened(demo_dir, tmp_path):
    repo = tmp_path / "in put #1?%20" / "input"
    repo.mkdir(parents=True)
    shutil.copyfile(demo_dir / SHIPPED, repo / REGISTRY_FILE)
    assert len(_resolve(repo, "run=6377")) == 5


def _sqlite_with(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path)
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()


def _not_sqlite(path: Path) -> None:
    path.write_text("run rerun filter camcol field\n4192 40 u 4 300\n")


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _no_raw_table(path: Path) -> None:
    _sqlite_with(path, "CREATE TABLE calexp (visit INT, ccd INT)")


def _foreign_columns(path: Path) -> None:  # an LSST-sim registry: visit/raft/sensor, no run/camcol/field
    _sqlite_with(path, "CREATE TABLE raw (id INTEGER PRIMARY KEY, visit INT, raft TEXT, sensor TEXT, filter TEXT)")


def _truncated(path: Path, shipped: Path) -> None:
    path.write_bytes(shipped.read_bytes()[:2048])  # the header says 7 pages; the table's page is cut off


def _malformed_row(path: Path, shipped: Path) -> None:
    shutil.copyfile(shipped, path)
    _sqlite_with(path, "UPDATE raw SET filter = 'x' WHERE id = 3")


def _dangling_link(path: Path) -> None:
    path.symlink_to(path.parent / "registry-moved-away.sqlite3")


def _directory(path: Path) -> None:
    path.mkdir()


BAD_REGISTRIES = {
    "not SQLite": (_not_sqlite, "file is not a database"),
    "empty file": (_empty, "no table raw"),
    "missing table": (_no_raw_table, "no table raw"),
    "missing columns": (_foreign_columns, "table raw has no column run, rerun, camcol, field"),
    "truncated": (_truncated, "malformed"),
    "malformed row": (_malformed_row, "malformed row in table raw"),
    "unreadable: dangling link": (_dangling_link, "unable to open database file"),
    "unreadable: a directory": (_directory, "cannot read the registry"),
}


def _make_bad(case: str, repo: Path, shipped: Path) -> None:
    make, _message = BAD_REGISTRIES[case]
    path = repo / REGISTRY_FILE
    if make in (_truncated, _malformed_row):
        make(path, shipped)
    else:
        make(path)


@pytest.mark.parametrize("case", list(BAD_REGISTRIES))
def test_an_unusable_registry_is_an_error_naming_it(case, demo_dir, tmp_path):
    repo = tmp_path / "input"
    repo.mkdir()
    _make_bad(case, repo, demo_dir / SHIPPED)
    with pytest.raises(RegistryError) as raised:
        _resolve(repo, "run=4192")
    message = str(raised.value)
    assert message.startswith(f"{repo / REGISTRY_FILE}: ") and BAD_REGISTRIES[case][1] in message, message
    assert f"gen-registry {repo}" in message and raised.value.exit_code == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file without read permission")
def test_a_registry_without_read_permission_is_an_error_naming_it(registry_repo):
    (registry_repo / REGISTRY_FILE).chmod(0)
    with pytest.raises(RegistryError, match=f"{registry_repo / REGISTRY_FILE}: cannot read the registry"):
        _resolve(registry_repo, "run=4192")


@pytest.mark.parametrize("case", ["not SQLite", "missing columns", "unreadable: dangling link"])
def test_process_ccd_stops_with_one_line_naming_the_registry(case, demo_dir, tmp_path):
    repo = tmp_path / "input"
    repo.mkdir()
    _make_bad(case, repo, demo_dir / SHIPPED)
    for extra in (("--output", "out"), ("--show-ids",)):
        result = _cli("input", "--id", "run=4192", *extra, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("process-ccd: error: input/registry.sqlite3: "), lines
    assert not (tmp_path / "out").exists()


def test_show_ids_prints_the_expansion_and_its_source(registry_repo, tmp_path):
    result = _cli(str(registry_repo), "--id", "run=4192", "--id", "run=6377", "filter=g^u", "--show-ids")
    assert result.returncode == 0, result.stderr
    registry = registry_repo / REGISTRY_FILE
    assert result.stdout.splitlines() == [
        f"# --id run=4192: 5 data ids from registry {registry}",
        *(f"run=4192 rerun=40 camcol=4 field=300 filter={f}" for f in UGRIZ),
        f"# --id run=6377 filter=g^u: 2 data ids from registry {registry}",
        "run=6377 rerun=40 camcol=4 field=399 filter=g",
        "run=6377 rerun=40 camcol=4 field=399 filter=u",
    ]


def test_show_ids_without_a_registry_scans_and_reports_bad_ids(demo_dir, tmp_path):
    repo = tmp_path / "input"
    shutil.copytree(demo_dir / "input/6377", repo / "6377", copy_function=os.symlink)
    result = _cli(str(repo), "--id", "run=6377 filter=i", "--id", "run=4192", "--show-ids")
    assert result.returncode == 2
    assert result.stdout.splitlines() == [f"# --id run=6377 filter=i: 1 data ids from directory scan of {repo}",
                                          "run=6377 rerun=40 camcol=4 field=399 filter=i"]
    assert "data id run=4192 matches no fpC file" in result.stderr


def test_a_listed_frame_without_its_file_names_the_file_and_the_registry(registry_repo):
    butler = Butler(registry_repo)
    (data_id,) = butler.resolve(parse_id_expression("run=4192 filter=g"))
    with pytest.raises(InputError, match=r"fpC-004192-g4-0300.fit.gz: fpC file not found for data id .* "
                                         r"\(listed in .*registry.sqlite3\)"):
        butler.get("fpC", data_id)


@pytest.mark.slow
def test_registry_frame_with_missing_files_fails_alone(demo_dir, tmp_path):
    """`--id run=4192 filter=g^r` through the registry: g's fpC is gone, r is still processed."""
    from fault_data import mirror_input

    repo = mirror_input(demo_dir / "input", tmp_path / "input")
    (repo / "4192/40/corr/4/fpC-004192-g4-0300.fit.gz").unlink()
    result = _cli("input", "--id", "run=4192", "filter=g^r", "--output", "out", "-j", "1", cwd=tmp_path)
    assert result.returncode == InputError.exit_code, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "fpC-004192-g4-0300.fit.gz: fpC file not found" in errors[0], result.stderr
    assert "registry.sqlite3" in errors[0]
    assert (tmp_path / "out/sci-results/4192/4/r/src/src-004192-r4-0300.fits").is_file()
    assert not (tmp_path / "out/sci-results/4192/4/g").exists()
