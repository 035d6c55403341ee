"""Typed pipeline configuration <-> YAML: defaults, the packaged SDSS overrides, files and `key=value`.

The configuration is `ProcessCcdConfig` and the dataclasses nested in it. Everything here works
generically over `dataclasses.fields` and the fields' type hints, so a sub-config added to the task
appears in `--show-config`, in the YAML files and in `--config` overrides without change here.

Order of precedence (later wins): dataclass defaults, `configs/processCcd.yaml` (the SDSS/2013 values),
`--config-file FILE` (in order), `--config key.sub=value` (in order).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from processccd.errors import ProcessCcdError

PACKAGED_CONFIG = "configs/processCcd.yaml"


class ConfigError(ProcessCcdError):
    """An unknown configuration key, a value of the wrong type, or an unreadable config file."""

    exit_code = 2

    def __init__(self, message: str, detail: list[str] | None = None) -> None:
        super().__init__(message)
        self.detail = detail or []  # extra lines shown under the error line (e.g. a config diff)


# --- dataclass <-> plain data ----------------------------------------------------------------
def config_to_dict(config: Any) -> dict[str, Any]:
    """The config as nested dicts of YAML scalars and lists (tuples become lists)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"not a dataclass instance: {config!r}")
    return {f.name: _to_plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, tuple | list):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def config_from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build `cls` from a (possibly partial) nested dict; missing keys keep their defaults.

    Raises ConfigError naming the dotted key for an unknown key or a value of the wrong type.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"config {prefix.rstrip('.') or '(root)'}: expected a mapping, got {_describe(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]}"
                          f" (known under {prefix.rstrip('.') or 'the root'}: {', '.join(sorted(fields))})")
    kwargs = {name: _coerce(hints[name], value, f"{prefix}{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config {prefix.rstrip('.') or '(root)'}: {err}") from err


def _coerce(hint: Any, value: Any, key: str) -> Any:
    """`value` converted to the type `hint`, or ConfigError."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return config_from_dict(hint, value, f"{key}.")
    if hint is Any:
        return value
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"config {key}: {value!r} is not one of {', '.join(repr(a) for a in args)}")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(option, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"config {key}: {_describe(value)} fits none of {hint}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config {key}: expected a list, got {_describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if args and len(value) != len(args):
            raise ConfigError(f"config {key}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config {key}: expected a list, got {_describe(value)}")
        return [_coerce(args[0], v, f"{key}[{i}]") if args else v for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config {key}: expected a mapping, got {_describe(value)}")
        return {_coerce(args[0], k, key): _coerce(args[1], v, f"{key}.{k}") for k, v in value.items()} \
            if args else dict(value)
    return _coerce_scalar(hint, value, key)


def _coerce_scalar(hint: Any, value: Any, key: str) -> Any:
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif hint is Path:
        if isinstance(value, str | Path):
            return Path(value)
    elif hint is type(None):
        if value is None:
            return None
    elif isinstance(hint, type) and isinstance(value, hint):
        return value
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"config {key}: expected {name}, got {_describe(value)}")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


# --- overrides -------------------------------------------------------------------------------
def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Nested dicts: `override` on top of `base` (neither is modified)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> dict[str, Any]:
    """`key.sub=value` -> {"key": {"sub": value}}; the value is parsed as YAML (typed: 5, 2.5, true, [1, 2])."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"malformed --config {text!r} (expected key.sub=value)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--config {text!r}: value is not valid YAML ({err.__class__.__name__})") from err
    nested: dict[str, Any] = {}
    cursor = nested
    parts = key.split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


def read_config_file(path: Path | str) -> dict[str, Any]:
    """The mapping of a YAML config file (safe loading); an empty file is an empty mapping."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file ({err.strerror or err})") from err
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config file must hold a mapping, not {type(data).__name__}")
    return data


def packaged_overrides() -> dict[str, Any]:
    """The SDSS/2013 values of the packaged `configs/processCcd.yaml`."""
    text = resources.files("processccd").joinpath(PACKAGED_CONFIG).read_text()
    return yaml.safe_load(text) or {}


def load_config(config_files: Iterable[Path | str] = (), overrides: Iterable[str] = ()) -> Any:
    """The ProcessCcdConfig in force: defaults + packaged SDSS values + files + `key=value` overrides."""
    from processccd.tasks.process_ccd import ProcessCcdConfig

    data = config_to_dict(ProcessCcdConfig())
    data = _merge_checked(ProcessCcdConfig, data, packaged_overrides(), PACKAGED_CONFIG)
    for path in config_files:
        data = _merge_checked(ProcessCcdConfig, data, read_config_file(path), str(path))
    for text in overrides:
        data = _merge_checked(ProcessCcdConfig, data, parse_override(text), f"--config {text}")
    return config_from_dict(ProcessCcdConfig, data)


def _merge_checked(cls: type, data: dict[str, Any], override: dict[str, Any], source: str) -> dict[str, Any]:
    """Merge and validate at once, so that an error names where the bad value came from."""
    merged = merge(data, override)
    try:
        config_from_dict(cls, merged)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from err
    return merged


# --- the config in force, on disk ------------------------------------------------------------
def dump_config(config: Any, documented: bool = False) -> str:
    """YAML text of the config (sorted keys, block style); `documented`: a comment line above every key
    whose dataclass field carries `metadata={"doc": ...}`."""
    header = "# processCcd configuration in force (process-ccd --show-config)\n"
    text = yaml.safe_dump(config_to_dict(config), sort_keys=True, default_flow_style=False)
    return header + (_with_docs(text, config_docs(type(config))) if documented else text)


def config_docs(cls: type, prefix: str = "") -> dict[str, str]:
    """Dotted key -> documentation of every field of `cls` (and its nested dataclasses) that has one."""
    docs = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if "doc" in f.metadata:
            docs[f"{prefix}{f.name}"] = f.metadata["doc"]
        if dataclasses.is_dataclass(hints[f.name]):
            docs.update(config_docs(hints[f.name], f"{prefix}{f.name}."))
    return docs


def _with_docs(text: str, docs: dict[str, str]) -> str:
    """The block-style YAML `text` with '# doc' lines above the keys of `docs`."""
    lines: list[str] = []
    path: list[str] = []
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        indent = (len(line) - len(stripped)) // 2
        if not stripped.startswith("- ") and ":" in stripped:
            path = path[:indent] + [stripped.split(":", 1)[0]]
            doc = docs.get(".".join(path))
            if doc:
                lines.append(f"{'  ' * indent}# {doc}")
        lines.append(line)
    return "\n".join(lines) + "\n"


def config_hash(config: Any) -> str:
    """SHA-256 of the canonical JSON form of the config: equal configs, equal hashes."""
    canonical = json.dumps(config_to_dict(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Lines `key: old -> new` for every dotted key whose value differs (missing keys shown as <absent>)."""
    lines = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            lines.extend(config_diff(a, b, f"{prefix}{key}."))
        elif a != b:
            lines.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return lines
