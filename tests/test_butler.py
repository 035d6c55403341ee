"""The path mapper: templates, rerun discovery, atomic puts."""

from pathlib import Path

import pytest
import yaml

import processccd.butler as butler_module
from processccd.butler import Butler, atomic_path, dump_yaml
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


YAML_RECORD = {
    "status": "success", "data_id": {"run": 4192, "camcol": 4, "field": 300, "filter": "i", "rerun": None},
    "floats": [1.100511114134439, -6.723101949162466e-05, 1e300, 5e-324, 0.0, -0.0, float("inf"), -float("inf"),
               float("nan"), 1e16, 123456789012345678.0],
    "ints": [0, -1, 2**63 - 1, -(2**63), 10**30], "flags": [True, False], "long": list(range(300)),
    "strings": ["", "yes", "null", "1.0", "2026-11-24T10:30:12Z", "a: b", "#x", "- x", "~", "'q'", '"dq"', " lead",
                "trail ", "x" * 200, "aperture correction flux.sinc/flux.psf; a(x, y) = sum of coefficient * term, "
                "terms y^(d-k) x^k for d = 0..order, k = 0..d, raw 0-based pixel coordinates"],
    "stars": [{"id": 427976069518196779, "x": 499.16622169776315, "flux.psf": 17502.667004597628}] * 3,
}


@pytest.mark.parametrize("dumper", [butler_module.SAFE_DUMPER, yaml.SafeDumper])
@pytest.mark.parametrize("sort_keys", [True, False])
def test_dump_yaml_is_safe_dump(dumper: type, sort_keys: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """libyaml's emitter (when present) and the pure-Python fallback both give yaml.safe_dump's text."""
    monkeypatch.setattr(butler_module, "SAFE_DUMPER", dumper)
    assert dump_yaml(YAML_RECORD, sort_keys=sort_keys) == yaml.safe_dump(YAML_RECORD, sort_keys=sort_keys)


def test_metadata_yaml_round_trip(tmp_path: Path) -> None:
    butler = Butler(tmp_path / "in", tmp_path / "out")
    data_id = DataId(run=4192, camcol=4, field=300, filter="i", rerun=40)
    path = butler.write_metadata(data_id, YAML_RECORD)
    assert path.read_text() == yaml.safe_dump(YAML_RECORD, sort_keys=True, default_flow_style=False)
    record = butler.read_metadata(data_id)
    assert record is not None and record["strings"] == YAML_RECORD["strings"] and record["long"] == list(range(300))
