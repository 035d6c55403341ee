"""The acceptance gate of `compare-results --gate`: bounds on the figures of a comparison.

Gate file (YAML mapping, `load_gate` / `check_gate`). Each key is a figure name (`processccd.comparison`)
plus a bound suffix, optionally followed by ``_per_frame``; each value is a number or a two-number list:

- ``<figure>_min: v``  → figure ≥ v;  ``<figure>_max: v`` → figure ≤ v;
- ``<figure>: [lo, hi]`` → lo ≤ figure ≤ hi;
- without ``_per_frame`` the bound applies to the pooled scope ``all``; with it, to every frame.

Example::

    completeness_snr10_min_per_frame: 0.99
    psf_raw_ratio_median_snr50: [0.998, 1.002]
    centroid_offset_median_snr50_max: 0.01

``extends: FILE`` (a path relative to the gate file) starts from that gate's bounds; the file's own entries
add to them or replace them (a subset of the demo frames keeps the full demo's gate but the pooled bounds
that depend on which frames are pooled).

A NaN figure (e.g. an empty bin) fails its bound. Unknown figure names are an error. yaml is imported by
`load_gate` only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from processccd.comparison import ALL_SCOPE, CompareReport, compare_lists, is_nan
from processccd.errors import InputError
from processccd.source_list import BOOL_COLUMNS, COLUMNS, ID_FRAME_SHIFT

PER_FRAME_SUFFIX = "_per_frame"


@dataclass(frozen=True)
class GateBound:
    """One gate entry: figure, lower/upper bounds (None = open), and whether it applies per frame."""

    key: str
    figure: str
    lower: float | None
    upper: float | None
    per_frame: bool

    def describe(self) -> str:
        """The bound as text: '[lo, hi]', '>= lo' or '<= hi'."""
        if self.lower is not None and self.upper is not None:
            return f"[{self.lower:g}, {self.upper:g}]"
        return f">= {self.lower:g}" if self.lower is not None else f"<= {self.upper:g}"


def _parse_gate_entry(key: str, value: Any, source: str) -> GateBound:
    name = str(key)
    per_frame = name.endswith(PER_FRAME_SUFFIX)
    if per_frame:
        name = name[: -len(PER_FRAME_SUFFIX)]

    def number(v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise InputError(f"{source}: {key}: {v!r} is not a number")
        return float(v)

    if isinstance(value, list):
        if len(value) != 2:
            raise InputError(f"{source}: {key}: a range is a list [lo, hi] of two numbers")
        lower, upper = number(value[0]), number(value[1])
        return GateBound(str(key), name, lower, upper, per_frame)
    if name.endswith("_min"):
        return GateBound(str(key), name[:-4], number(value), None, per_frame)
    if name.endswith("_max"):
        return GateBound(str(key), name[:-4], None, number(value), per_frame)
    raise InputError(f"{source}: {key}: a single number needs a key ending in _min or _max "
                     f"(optionally followed by {PER_FRAME_SUFFIX})")


def default_gate_path() -> Path:
    """The packaged gate holding the project's acceptance targets (configs/compare-gate.yaml)."""
    return Path(__file__).resolve().parent / "configs" / "compare-gate.yaml"


EXTENDS_KEY = "extends"
MAX_EXTENDS_DEPTH = 8


def load_gate(path: str | Path) -> list[GateBound]:
    """Read and validate a gate YAML file (schema in the module docstring), following `extends`."""
    path = Path(path)
    return parse_gate(_gate_entries(path, depth=0), str(path))


def _gate_entries(path: Path, depth: int) -> dict[str, Any]:
    """The mapping of a gate file with the entries of the gate it extends merged under its own."""
    import yaml

    try:
        content = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise InputError(f"{path}: cannot read the gate file ({err})") from err
    if not isinstance(content, dict) or not content:
        raise InputError(f"{path}: a gate file is a non-empty mapping 'figure_min: value'")
    base = content.pop(EXTENDS_KEY, None)
    if base is None:
        return content
    if not isinstance(base, str) or not base:
        raise InputError(f"{path}: {EXTENDS_KEY}: expected the path of another gate file, got {base!r}")
    if depth >= MAX_EXTENDS_DEPTH:
        raise InputError(f"{path}: {EXTENDS_KEY}: more than {MAX_EXTENDS_DEPTH} levels (a cycle?)")
    return {**_gate_entries(path.parent / base, depth + 1), **content}


def parse_gate(content: Mapping[str, Any], source: str = "gate") -> list[GateBound]:
    """Gate bounds from an already-loaded mapping; unknown figure names are an InputError."""
    bounds = [_parse_gate_entry(key, value, source) for key, value in content.items()]
    known = _known_figures()
    for bound in bounds:
        if bound.figure not in known:
            raise InputError(f"{source}: {bound.key}: unknown figure {bound.figure!r}")
    return bounds


def _known_figures() -> set[str]:
    """Every figure name a report holds (computed on two one-row lists)."""
    row = {name: (np.array([1 << ID_FRAME_SHIFT]) if name == "id" else np.zeros(1, dtype=bool)
                  if name in BOOL_COLUMNS else np.ones(1)) for name in COLUMNS}
    return set(compare_lists(row, row).figures[ALL_SCOPE])


def check_gate(report: CompareReport, bounds: Sequence[GateBound]) -> list[str]:
    """One line per failing figure ('<scope>: <figure> = <value> (bound)'); empty when all pass."""
    failures: list[str] = []
    for bound in bounds:
        scopes = report.frames if bound.per_frame else [ALL_SCOPE]
        for scope in scopes:
            value = report.figures[scope][bound.figure]
            if is_nan(value) or (bound.lower is not None and value < bound.lower) or (
                bound.upper is not None and value > bound.upper
            ):
                failures.append(f"FAIL {scope}: {bound.figure} = {value:.6g} "
                                f"(required {bound.describe()}; gate key {bound.key})")
    return failures
