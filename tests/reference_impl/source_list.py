"""Per-value printing of the detected-sources list (`processccd.source_list` prints whole rows at once)."""

from __future__ import annotations

from typing import Any

import numpy as np

from processccd.source_list import Kind


def _add_dot_zero(text: str) -> str:
    """Append '.0' to an integral-looking number, as Python 2 and numpy 1.7 `str` did."""
    return text + ".0" if text.lstrip("-").isdigit() else text


def format_value(value: Any, kind: Kind) -> str:
    """One value printed the way the 2013 export script printed it."""
    if kind == "double":
        return _add_dot_zero(f"{float(value):.12g}")
    if kind == "float32":
        return _add_dot_zero(f"{float(np.float32(value)):.6g}")
    if kind == "bool":
        return "True" if value else "False"
    if kind == "id":
        return str(int(value))
    raise ValueError(f"unknown column kind {kind!r}")


