"""Error types of processccd; the CLI maps each to an exit code and one clear line."""

from __future__ import annotations


class ProcessCcdError(Exception):
    """Base class of every error processccd raises on purpose."""

    exit_code = 1


class DataIdError(ProcessCcdError):
    """A malformed data id, an unknown key or value, or an id that matches no input."""

    exit_code = 2


class InputError(ProcessCcdError):
    """A missing, unreadable or inconsistent input file."""

    exit_code = 3


class CalibrationError(ProcessCcdError):
    """A calibration step that cannot produce a usable result."""

    exit_code = 4


class OutputError(ProcessCcdError):
    """An output that cannot be written."""

    exit_code = 5


class MissingExtraError(ProcessCcdError):
    """An option that needs an optional dependency (a pip extra) that is not installed."""

    exit_code = 2


class MissingInputError(InputError):
    """An input that a fallback can replace is absent (an asTrans file, or its HDU or row for a frame)."""
