"""Data ids: `DataId` and the `key=v1^v2 key=v` id-expression parser of the LSST command line."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

from processccd.errors import DataIdError

FILTERS = ("u", "g", "r", "i", "z")
KEYS = ("run", "rerun", "camcol", "field", "filter")
_INTEGER = re.compile(r"[0-9]{1,9}")  # ASCII digits only (str.isdigit, int() and \d accept Unicode digits)
_SEPARATOR = re.compile(r"[ \t\n\r\f\v]+")  # ASCII whitespace only (str.split() also splits on U+0085, U+2003...)


@dataclass(frozen=True, order=True)
class DataId:
    """One SDSS frame: (run, rerun, camcol, field, filter). `rerun` is None until discovered."""

    run: int
    camcol: int
    field: int
    filter: str
    rerun: int | None = None

    @property
    def filter_index(self) -> int:
        """u0 g1 r2 i3 z4, the index of tsField/psField arrays and of LSST exposure ids."""
        return FILTERS.index(self.filter)

    @property
    def exposure_id(self) -> int:
        """The LSST 2013 exposure id ((run*10 + filterIndex)*10 + camcol)*10000 + field."""
        return ((self.run * 10 + self.filter_index) * 10 + self.camcol) * 10000 + self.field

    def as_dict(self) -> dict[str, int | str | None]:
        return {"run": self.run, "rerun": self.rerun, "camcol": self.camcol, "field": self.field,
                "filter": self.filter}

    def __str__(self) -> str:
        rerun = "" if self.rerun is None else f" rerun={self.rerun}"
        return f"run={self.run}{rerun} camcol={self.camcol} field={self.field} filter={self.filter}"

    def label(self) -> str:
        """A short frame label such as '4192 g4 300'."""
        return f"{self.run} {self.filter}{self.camcol} {self.field}"


def _parse_value(key: str, text: str) -> int | str:
    if key == "filter":
        if text not in FILTERS:
            raise DataIdError(f"unknown filter {text!r} in data id (allowed: {', '.join(FILTERS)})")
        return text
    if not _INTEGER.fullmatch(text):
        raise DataIdError(f"{key}={text!r} in data id is not a non-negative integer")
    value = int(text)
    if key == "camcol" and not 1 <= value <= 6:
        raise DataIdError(f"camcol={value} in data id is out of range 1-6")
    return value


def parse_id_expression(expression: str | list[str] | tuple[str, ...]) -> dict[str, list[int | str]]:
    """Parse `run=4192 filter=u^g camcol=4 field=300` into {key: [values]}; values validated.

    Terms are separated by ASCII whitespace; integer values are 1-9 ASCII decimal digits (no sign, `_`,
    Unicode digit or space), anything else raises DataIdError.
    """
    expressions = [expression] if isinstance(expression, str) else expression
    tokens = [t for e in expressions for t in _SEPARATOR.split(e) if t]
    if not tokens:
        raise DataIdError("empty data id")
    values: dict[str, list[int | str]] = {}
    for token in tokens:
        key, sep, text = token.partition("=")
        if not sep or not key or not text:
            raise DataIdError(f"malformed data id term {token!r} (expected key=value)")
        if key not in KEYS:
            raise DataIdError(f"unknown data id key {key!r} in {token!r} (allowed: {', '.join(KEYS)})")
        if key in values:
            raise DataIdError(f"data id key {key!r} given twice")
        parts = text.split("^")
        if any(p == "" for p in parts):
            raise DataIdError(f"malformed value list in {token!r}")
        values[key] = list(dict.fromkeys(_parse_value(key, p) for p in parts))
    return values


def expand_id_expression(values: dict[str, list[int | str]]) -> list[dict[str, int | str | None]]:
    """The cartesian product of the value lists, as partial ids (missing keys are None)."""
    keys = [k for k in KEYS if k in values]
    return [
        {**dict.fromkeys(KEYS), **dict(zip(keys, combo, strict=True))}
        for combo in itertools.product(*(values[k] for k in keys))
    ]
