"""The path mapper: templates, rerun discovery, atomic puts."""

from pathlib import Path

import pytest

from processccd.butler import Butler, atomic_path
from processccd.dataid import DataId, parse_id_expression
from processccd.errors import DataIdError, InputError, OutputError


def make_repo(root: Path, frames: list[tuple[int, int, str, int]], rerun: int = 40) -> None:
    for run, camcol, filt, field in frames:
        p = root / f"{run}/{rerun}/corr/{camcol}/fpC-{run:06d}-{filt}{camcol}-{field:04d}.fit.gz"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def test_input_and_output_paths(tmp_path):
    butler = Butler(tmp_path / "in", tmp_path / "out")
    data_id = DataId(run=4192, camcol=4, field=300, filter="g", rerun=40)
    assert butler.path("fpC", data_id) == tmp_path / "in/4192/40/corr/4/fpC-004192-g4-0300.fit.gz"
    assert butler.path("tsField", data_id) == tmp_path / "in/4192/40/calibChunks/4/tsField-004192-4-40-0300.fit"
    assert butler.path("asTrans", data_id) == tmp_path / "in/4192/40/astrom/asTrans-004192.fit"
    assert butler.path("calexp", data_id) == tmp_path / "out/sci-results/4192/4/g/calexp/calexp-004192-g4-0300.fits"
    assert butler.path("calexpBackground", data_id).name == "bkgd-calexp-004192-g4-0300.fits"


def test_resolve_discovers_rerun_and_missing_keys(tmp_path):
    make_repo(tmp_path, [(4192, 4, f, 300) for f in "ugr"] + [(6377, 4, "u", 399)])
    butler = Butler(tmp_path)
    ids = butler.resolve(parse_id_expression("run=4192 camcol=4 field=300 filter=g"))
    assert ids == [DataId(run=4192, camcol=4, field=300, filter="g", rerun=40)]
    ids = butler.resolve(parse_id_expression("run=4192"))
    assert [d.filter for d in ids] == ["u", "g", "r"]
    with pytest.raises(DataIdError, match="matches no fpC"):
        butler.resolve(parse_id_expression("run=4192 field=301"))
    with pytest.raises(DataIdError, match="no run 9999"):
        butler.resolve(parse_id_expression("run=9999 camcol=4 field=300 filter=u"))


def test_fully_given_id_with_missing_file_is_kept_and_reading_names_the_file(tmp_path):
    make_repo(tmp_path, [(4192, 4, "u", 300)])
    butler = Butler(tmp_path)
    (data_id,) = butler.resolve(parse_id_expression("run=4192 camcol=4 field=300 filter=z"))
    with pytest.raises(InputError, match="fpC-004192-z4-0300.fit.gz"):
        butler.get("fpC", data_id)


def test_missing_input_repository(tmp_path):
    with pytest.raises(InputError, match="input repository not found"):
        Butler(tmp_path / "nope").resolve(parse_id_expression("run=1"))


def test_atomic_put_leaves_nothing_on_failure(tmp_path):
    butler = Butler(tmp_path / "in", tmp_path / "out")
    data_id = DataId(run=4192, camcol=4, field=300, filter="g", rerun=40)

    def failing_writer(path: Path) -> None:
        path.write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match="No space left on device"):
        butler.put("calexp", data_id, failing_writer)
    leftovers = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert leftovers == []
    path = butler.put("calexp", data_id, lambda p: p.write_text("ok"))
    assert path.read_text() == "ok"
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_atomic_path_renames_only_on_success(tmp_path):
    target = tmp_path / "x.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_output_repository_records_its_input(tmp_path):
    butler = Butler(tmp_path / "in", tmp_path / "out")
    butler.record_output_repository()
    text = (tmp_path / "out/repository.yaml").read_text()
    assert str((tmp_path / "in").resolve()) in text


def test_discover_outputs(tmp_path):
    butler = Butler(tmp_path / "in", tmp_path / "out")
    data_id = DataId(run=4192, camcol=4, field=300, filter="g", rerun=40)
    butler.put("src", data_id, lambda p: p.write_text("x"))
    assert butler.discover_outputs("src") == [DataId(run=4192, camcol=4, field=300, filter="g")]
