"""Log lines in the style of the LSST task logs.

    processCcd.calibrate.detection: Detected 20 positive sources to 5 sigma
    processCcd.calibrate.astrometry WARNING: reference catalogue unusable, ...
    processCcd.run: error: data id run=4192 ...: <file>: not a readable fpC FITS file (...)

Error messages carry their own "error:" (one line that names the data id and the file).
"""

from __future__ import annotations

import logging
import sys


class TaskLogFormatter(logging.Formatter):
    """`name: message`, with WARNING after the logger name for warnings."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        if record.levelno == logging.WARNING:
            return f"{record.name} {record.levelname}: {message}"
        return f"{record.name}: {message}"


def configure_task_logging(level: int) -> None:
    """Send task log lines to stderr at `level` (replacing any earlier configuration)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TaskLogFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
