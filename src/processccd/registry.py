"""The input registry `registry.sqlite3`: data-id expansion by an indexed query, as the LSST butler did.

The 2013 input repository carries `registry.sqlite3` (made by LSST's genInputRegistry) beside `_mapper`:
table `raw` lists every frame (run, rerun, filter, camcol, field, taiObs, strip) with a unique index on
(run, filter, camcol, field); table `raw_skyTile` lists the sky tiles each frame overlaps. Keys left out of
an `--id` are filled from `raw` by one parameterised query per partial id, instead of a directory walk.

The registry is opened read-only (SQLite URI `mode=ro`). A registry that exists but cannot serve (not
SQLite, no `raw` table, `raw` without the id columns, unreadable, malformed rows) is a `RegistryError`
naming it: the run stops with one line instead of silently walking the directories, which on a survey-sized
input takes minutes and may not list the frames the registry was meant to define.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

from processccd.dataid import FILTERS, DataId
from processccd.errors import ProcessCcdError

REGISTRY_FILE = "registry.sqlite3"
MAPPER_FILE = "_mapper"
SDSS_MAPPER = "lsst.obs.sdss.sdssMapper.SdssMapper"
ID_COLUMNS = ("run", "rerun", "filter", "camcol", "field")  # the columns of `raw` that an id expansion needs
# One fixed SQL fragment per id key: queries are joined from these constants, every value is a bound parameter.
_CONDITIONS = {key: f"{key} = ?" for key in ID_COLUMNS}
_SELECT = "SELECT DISTINCT run, rerun, filter, camcol, field FROM raw"


class RegistryError(ProcessCcdError):
    """A registry.sqlite3 that exists but cannot be used (corrupt, foreign or unreadable)."""

    exit_code = 2


def registry_path(input_root: Path) -> Path:
    return Path(input_root) / REGISTRY_FILE


def has_registry(input_root: Path) -> bool:
    """Whether the input repository has a registry file (a dangling link counts: it is an unreadable one)."""
    return os.path.lexists(registry_path(input_root))


class Registry:
    """A read-only connection to a registry; `frames(partial)` lists the frames a partial id matches."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.hint = f"rebuild it with `gen-registry {self.path.parent}`, or remove it to scan the directories"
        uri = f"{self.path.absolute().as_uri()}?mode=ro"
        try:
            self._conn = sqlite3.connect(uri, uri=True)
        except sqlite3.Error as err:
            raise self._error(err) from err
        try:
            columns = {row[1] for row in self._conn.execute("PRAGMA table_info(raw)")}
        except sqlite3.Error as err:
            self.close()
            raise self._error(err) from err
        if not columns:
            self.close()
            raise RegistryError(f"{self.path}: not an input registry (no table raw); {self.hint}")
        missing = [c for c in ID_COLUMNS if c not in columns]
        if missing:
            self.close()
            raise RegistryError(f"{self.path}: not an input registry (table raw has no column "
                                f"{', '.join(missing)}); {self.hint}")

    def _error(self, err: sqlite3.Error) -> RegistryError:
        return RegistryError(f"{self.path}: cannot read the registry ({err}); {self.hint}")

    def frames(self, partial: dict[str, Any]) -> list[DataId]:
        """The frames of `raw` that agree with every key `partial` gives (None: any), sorted like the scan."""
        given = [key for key in ID_COLUMNS if partial.get(key) is not None]
        query = _SELECT + (" WHERE " + " AND ".join(_CONDITIONS[key] for key in given) if given else "")
        try:
            rows = self._conn.execute(query, [partial[key] for key in given]).fetchall()
        except sqlite3.Error as err:
            raise self._error(err) from err
        found = [self._data_id(row) for row in rows]
        return sorted(found, key=lambda d: (d.run, d.camcol, d.field, FILTERS.index(d.filter), d.rerun))

    def raw_rows(self) -> list[tuple[int | str, ...]]:
        """Every row of `raw` as (run, rerun, filter, camcol, field, taiObs, strip)."""
        try:
            return self._conn.execute("SELECT run, rerun, filter, camcol, field, taiObs, strip FROM raw").fetchall()
        except sqlite3.Error as err:
            raise self._error(err) from err

    def sky_tiles(self) -> dict[tuple[int | str, ...], tuple[int, ...]]:
        """(run, rerun, filter, camcol, field) -> the frame's tiles in table `raw_skyTile`."""
        query = ("SELECT run, rerun, filter, camcol, field, skyTile FROM raw JOIN raw_skyTile USING (id) "
                 "ORDER BY skyTile")
        tiles: dict[tuple[int | str, ...], tuple[int, ...]] = {}
        try:
            for row in self._conn.execute(query):
                tiles[tuple(row[:5])] = (*tiles.get(tuple(row[:5]), ()), row[5])
        except sqlite3.Error as err:
            raise self._error(err) from err
        return tiles

    def _data_id(self, row: tuple[Any, ...]) -> DataId:
        run, rerun, filter_, camcol, field = row
        numbers = (run, rerun, camcol, field)
        if (filter_ not in FILTERS or not all(isinstance(v, int) and v >= 0 for v in numbers)
                or not 1 <= camcol <= 6):
            raise RegistryError(f"{self.path}: malformed row in table raw (run, rerun, filter, camcol, field = "
                                f"{', '.join(map(repr, row))}); {self.hint}")
        return DataId(run=run, camcol=camcol, field=field, filter=filter_, rerun=rerun)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
