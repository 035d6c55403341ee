"""Config <-> YAML: generic over nested dataclasses, typed overrides, clear errors, hashes and diffs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from processccd.config import (
    ConfigError,
    config_diff,
    config_from_dict,
    config_hash,
    config_to_dict,
    dump_config,
    load_config,
    packaged_overrides,
    parse_override,
)
from processccd.tasks.process_ccd import ProcessCcdConfig


@dataclass(frozen=True)
class Inner:
    radius: float = 7.0
    order: int = 2
    style: Literal["a", "b"] = "a"

    def __post_init__(self) -> None:
        if self.order < 0:
            raise ValueError(f"order must be >= 0, not {self.order}")


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    position: tuple[float, float] = (1.0, 2.0)
    label: str | None = None
    enabled: bool = True


def test_round_trip_of_a_new_nested_dataclass_without_any_registration():
    config = Outer(Inner(radius=3.0, order=1, style="b"), (5.0, 6.0), "x", False)
    plain = config_to_dict(config)
    assert plain == {"inner": {"radius": 3.0, "order": 1, "style": "b"}, "position": [5.0, 6.0], "label": "x",
                     "enabled": False}
    assert config_from_dict(Outer, yaml.safe_load(yaml.safe_dump(plain))) == config
    assert config_from_dict(Outer, {}) == Outer()  # missing keys keep defaults


@pytest.mark.parametrize("data, message", [
    ({"inner": {"radiu": 1.0}}, "unknown config key inner.radiu"),
    ({"colour": 1}, "unknown config key colour"),
    ({"inner": {"order": 2.5}}, "inner.order: expected int, got float 2.5"),
    ({"inner": {"order": True}}, "inner.order: expected int, got bool True"),
    ({"inner": {"radius": "big"}}, "inner.radius: expected float, got str 'big'"),
    ({"inner": {"style": "c"}}, "inner.style: 'c' is not one of 'a', 'b'"),
    ({"inner": 3}, "config inner: expected a mapping, got int 3"),
    ({"position": [1.0]}, "position: expected 2 values, got 1"),
    ({"enabled": "yes"}, "enabled: expected bool, got str 'yes'"),
    ({"inner": {"order": -1}}, "order must be >= 0"),
])
def test_unknown_keys_and_wrong_types_are_one_clear_error(data, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict(Outer, data)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_int_is_accepted_for_float_and_none_for_optional():
    config = config_from_dict(Outer, {"inner": {"radius": 4}, "label": None, "position": [3, 4]})
    assert config.inner.radius == 4.0 and isinstance(config.inner.radius, float)
    assert config.position == (3.0, 4.0) and config.label is None


def test_parse_override_is_typed_by_yaml():
    assert parse_override("detection.threshold=4.5") == {"detection": {"threshold": 4.5}}
    assert parse_override("measurement.replace_with_noise=false") == {"measurement": {"replace_with_noise": False}}
    assert parse_override("psf_sigma_position=[10, 20]") == {"psf_sigma_position": [10, 20]}
    for bad in ("detection.threshold", "=3", "a..b=1", "x=[1,"):
        with pytest.raises(ConfigError):
            parse_override(bad)


def test_packaged_sdss_file_holds_the_2013_defaults():
    assert packaged_overrides()["background_bin_size"] == 512
    assert packaged_overrides()["calibrate_detection"]["include_multiplier"] == 10.0
    assert load_config() == ProcessCcdConfig()


def test_load_config_applies_files_then_overrides_and_names_the_source(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("detection:\n  threshold: 4.0\n  bin_size: 256\n")
    config = load_config([path], ["detection.threshold=3.5", "exposure.variance_model=physical"])
    assert config.detection.threshold == 3.5 and config.detection.bin_size == 256
    assert config.exposure.variance_model == "physical"
    assert config.calibrate_detection == ProcessCcdConfig().calibrate_detection
    with pytest.raises(ConfigError, match=r"--config detection.threshold=high: .*expected float"):
        load_config([], ["detection.threshold=high"])
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config([path])
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config([tmp_path / "absent.yaml"])


def test_dump_is_loadable_and_hash_and_diff_follow_the_values():
    config = ProcessCcdConfig()
    assert config_from_dict(ProcessCcdConfig, yaml.safe_load(dump_config(config))) == config
    changed = load_config([], ["detection.threshold=6"])
    assert config_hash(config) == config_hash(ProcessCcdConfig()) != config_hash(changed)
    assert config_diff(config_to_dict(config), config_to_dict(changed)) == ["detection.threshold: 5.0 -> 6.0"]
    assert config_diff({"a": 1}, {"b": 2}) == ["a: 1 -> '<absent>'", "b: '<absent>' -> 2"]


def test_show_config_documents_the_lsst2020_keys_and_stays_valid_yaml():
    import yaml

    from processccd.config import config_to_dict, dump_config, load_config

    config = load_config()
    text = dump_config(config, documented=True)
    assert yaml.safe_load(text) == config_to_dict(config)
    lines = text.splitlines()
    for key in ("circular_aperture_radii", "kron_flux", "deblend", "edge_margin", "reference_flux"):
        above = [lines[i - 1] for i, line in enumerate(lines) if line.strip().startswith(f"{key}:")]
        assert above and all(line.strip().startswith("# ") for line in above), key
    assert dump_config(config) == "\n".join(line for line in lines if not line.strip().startswith("# ")
                                            or line.startswith("# processCcd")) + "\n"


def test_lsst2020_profile_turns_every_key_on(tmp_path):
    from pathlib import Path

    from processccd.config import load_config

    profile = load_config([Path(__file__).resolve().parents[1] / "configs" / "processCcd-lsst2020.yaml"])
    default = load_config()
    assert profile.measurement.deblend and not default.measurement.deblend
    assert profile.measurement.kron_flux and not default.measurement.kron_flux
    assert profile.measurement.circular_aperture_radii == (3.0, 4.5, 6.0, 9.0, 12.0, 17.0, 25.0, 35.0, 50.0, 70.0)
    assert default.measurement.circular_aperture_radii == ()
    assert profile.detection.edge_margin == 3 and default.detection.edge_margin is None
    assert profile.calibrate.ap_corr.reference_flux == "flux.circular"
    assert default.calibrate.ap_corr.reference_flux == "flux.sinc"
