"""Build the input registry (`registry.sqlite3`, and `_mapper`) of an input repository from its fpC headers.

What LSST's genInputRegistry did for the 2013 demo: one row of table `raw` per fpC file under
`<run>/<rerun>/corr/<camcol>/`, with `taiObs` and `strip` from the fpC's primary header, in the same
schema and indices as the registry the demo shipped. Only the primary header is read: the gzip stream is
inflated up to the END card (a few kB of a 1.6 MB file). The database is written under a temporary name
and renamed; a run is fast enough to redo (bench/gen_registry_benchmark.py), and `update=True` reuses the
rows of an existing registry for the frames still present, reading only the new frames' headers.

`taiObs`, as the 2013 registry has it: the fpC's DATE-OBS and TAIHMS (TAI) as an instant, its fraction of a
second truncated to nanoseconds from the binary float of the seconds (so 34.68 s gives .679999999), printed
as the LSST DateTime printed instants: in UTC (TAI - 32 s in 2003, 33 s in 2006), `YYYY-MM-DDThh:mm:ss.nnnnnnnnn`.
`strip`: STRIPE followed by STRIP as written in the header, trailing blanks included ('82S       ').

Table `raw_skyTile` lists, per frame id, the tiles of LSST's quad-sphere sky pixelization that the frame's
footprint overlaps (`processccd.skytile`: the image corners padded by ~15" through the fpC header's TAN WCS);
nothing in processccd reads it, it is written for tools that expect the 2013 registry. A header without a
usable WCS gives its frame no tile, with a warning.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import erfa
import numpy as np

from processccd.butler import Butler, atomic_path
from processccd.dataid import DataId
from processccd.errors import InputError
from processccd.registry import MAPPER_FILE, REGISTRY_FILE, SDSS_MAPPER, Registry, RegistryError
from processccd.skytile import frame_corners, tiles_of

log = logging.getLogger("processccd.gen_registry")

# The schema and indices of the registry the 2013 demo shipped (made by LSST's genInputRegistry).
SCHEMA = (
    "CREATE TABLE raw (id INTEGER PRIMARY KEY AUTOINCREMENT, run INT, rerun INT, filter TEXT, camcol INT, "
    "field INT, taiObs TEXT, strip TEXT)",
    "CREATE TABLE raw_skyTile (id INTEGER, skyTile INTEGER)",
)
INDICES = (
    "CREATE UNIQUE INDEX uq_raw ON raw (run, filter, camcol, field)",
    "CREATE INDEX ix_skyTile_id ON raw_skyTile (id)",
    "CREATE INDEX ix_skyTile_tile ON raw_skyTile (skyTile)",
)
INSERT = "INSERT INTO raw (run, rerun, filter, camcol, field, taiObs, strip) VALUES (?, ?, ?, ?, ?, ?, ?)"
INSERT_TILE = "INSERT INTO raw_skyTile (id, skyTile) VALUES (?, ?)"
WCS_KEYS = ("NAXIS1", "NAXIS2", "CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2", "CD1_1", "CD1_2", "CD2_1", "CD2_2")

FITS_CARD = 80
GZIP_WBITS = 16 + zlib.MAX_WBITS
READ_CHUNK = 1 << 13  # compressed bytes read at a time; an fpC primary header (3 blocks) takes one or two
MAX_HEADER_BYTES = 1 << 20  # a primary header with no END card within 1 MiB is refused
_STRING = re.compile(r" *'((?:[^']|'')*)'")
_INTEGER = re.compile(r" *([-+]?[0-9]+) *(?:/.*)?")
_NUMBER = re.compile(r" *([-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[EDed][-+]?[0-9]+)?) *(?:/.*)?")


@dataclass(frozen=True)
class RawRow:
    """One row of table `raw`."""

    data_id: DataId
    tai_obs: str
    strip: str
    sky_tiles: tuple[int, ...] = ()

    def values(self) -> tuple[int | str | None, ...]:
        d = self.data_id
        return (d.run, d.rerun, d.filter, d.camcol, d.field, self.tai_obs, self.strip)


def read_primary_cards(path: Path) -> dict[str, str]:
    """Keyword -> value field (columns 11-80) of the primary header of a FITS file, gzipped or not.

    Reads and inflates only as far as the END card. Hand-written rather than astropy's header parser
    because that reads the whole gzip stream's first HDU and strips the trailing blanks of string values,
    which the 2013 registry kept (strip '82S       ').
    """
    cards: dict[str, str] = {}
    try:
        with open(path, "rb") as stream:
            first = stream.read(READ_CHUNK)
            inflater = zlib.decompressobj(GZIP_WBITS) if first[:2] == b"\x1f\x8b" else None
            text = b""
            chunk = first
            checked = 0
            while True:
                text += inflater.decompress(chunk, MAX_HEADER_BYTES) if inflater is not None else chunk
                for start in range(checked, len(text) - FITS_CARD + 1, FITS_CARD):
                    card = text[start:start + FITS_CARD].decode("ascii", errors="replace")
                    if card[:8] == "END     ":
                        return cards
                    if card[8:10] == "= ":
                        cards.setdefault(card[:8].rstrip(), card[10:])
                    checked = start + FITS_CARD
                if len(text) >= MAX_HEADER_BYTES:
                    raise InputError(f"{path}: cannot read fpC file (no END card in the first "
                                     f"{MAX_HEADER_BYTES} bytes of the primary header)")
                chunk = stream.read(READ_CHUNK)
                if not chunk and (inflater is None or not inflater.unconsumed_tail):
                    raise InputError(f"{path}: cannot read fpC file (it ends inside the primary header)")
                if inflater is not None and inflater.unconsumed_tail:
                    chunk = inflater.unconsumed_tail + chunk
    except (OSError, zlib.error) as err:
        raise InputError(f"{path}: cannot read fpC file ({type(err).__name__}: {err})") from err


def _string(cards: dict[str, str], key: str, path: Path) -> str:
    match = _STRING.match(cards.get(key, ""))
    if match is None:
        raise InputError(f"{path}: keyword {key} missing from the primary header or not a string")
    return match.group(1).replace("''", "'")


def _integer(cards: dict[str, str], key: str, path: Path) -> int:
    match = _INTEGER.fullmatch(cards.get(key, ""))
    if match is None:
        raise InputError(f"{path}: keyword {key} missing from the primary header or not an integer")
    return int(match.group(1))


def sky_tiles(cards: dict[str, str], path: Path) -> tuple[int, ...]:
    """The sky tiles of the frame whose primary header is `cards` (none, with a warning, without a TAN WCS)."""
    values = {}
    for key in WCS_KEYS:
        match = _NUMBER.fullmatch(cards.get(key, ""))
        if match is None:
            log.warning("%s: keyword %s missing from the primary header or not a number: no sky tiles", path, key)
            return ()
        values[key] = float(match.group(1).replace("D", "E").replace("d", "e"))
    cd = np.array([[values["CD1_1"], values["CD1_2"]], [values["CD2_1"], values["CD2_2"]]])
    if not np.all(np.isfinite(cd)) or abs(np.linalg.det(cd)) == 0:
        log.warning("%s: singular CD matrix: no sky tiles", path)
        return ()
    corners = frame_corners((values["CRPIX1"], values["CRPIX2"]), (values["CRVAL1"], values["CRVAL2"]), cd,
                            int(values["NAXIS1"]), int(values["NAXIS2"]))
    return tuple(tiles_of(corners))


def tai_obs(date_obs: str, taihms: str) -> str:
    """The registry's taiObs of a frame whose header has DATE-OBS `date_obs` and TAIHMS `taihms` (TAI).

    DATE-OBS is 'YYYY-MM-DD' (or 'DD/MM/YY' of 19YY); the instant is printed in UTC with nanoseconds,
    the fraction of a second truncated from the float seconds as the 2013 genInputRegistry did.
    """
    if "-" in date_obs:
        year, month, day = (int(p) for p in date_obs.strip().split("-"))
    else:
        day, month, short_year = (int(p) for p in date_obs.strip().split("/"))
        year = 1900 + short_year
    hour, minute, second_text = taihms.strip().split(":")
    seconds = float(second_text)
    whole = int(seconds)
    nanoseconds = int((seconds - whole) * 1e9)
    tai = datetime(year, month, day, int(hour), int(minute), whole)
    utc = tai
    for _ in range(2):  # TAI - UTC at the UTC instant: from the TAI date, then again from the UTC date found
        utc = tai - timedelta(seconds=round(erfa.dat(utc.year, utc.month, utc.day, _day_fraction(utc))))
    return f"{utc:%Y-%m-%dT%H:%M:%S}.{nanoseconds:09d}"


def _day_fraction(moment: datetime) -> float:
    return (moment.hour * 3600 + moment.minute * 60 + moment.second) / 86400.0


def raw_row(path: Path, data_id: DataId) -> RawRow:
    """The `raw` row of the fpC at `path` (InputError naming the file if its header lacks what is needed)."""
    cards = read_primary_cards(path)
    try:
        when = tai_obs(_string(cards, "DATE-OBS", path), _string(cards, "TAIHMS", path))
    except (ValueError, erfa.ErfaError) as err:
        raise InputError(f"{path}: DATE-OBS and TAIHMS of the primary header are not a date and time ({err})"
                         ) from err
    strip = f"{_integer(cards, 'STRIPE', path)}{_string(cards, 'STRIP', path)}"
    return RawRow(data_id, when, strip, sky_tiles(cards, path))


def _existing_rows(path: Path) -> dict[tuple[int | str, ...], tuple[str, str, tuple[int, ...]]]:
    """(taiObs, strip, sky tiles) of the frames of an existing registry by (run, rerun, filter, camcol, field);
    empty (with a warning) if it cannot be read."""
    try:
        with Registry(path) as registry:
            tiles = registry.sky_tiles()
            return {tuple(row[:5]): (row[5], row[6], tiles.get(tuple(row[:5]), ())) for row in registry.raw_rows()}
    except RegistryError as err:
        log.warning("%s: reading every header", err)
        return {}


@dataclass
class GenRegistryResult:
    path: Path
    frames: int
    headers_read: int
    errors: list[InputError]


def gen_registry(input_root: Path, update: bool = False) -> GenRegistryResult:
    """Write `<input_root>/registry.sqlite3` (and `_mapper`) for the fpC files under `input_root`.

    A frame whose header cannot be read is left out and its error returned; a frame present under two
    reruns keeps the higher one (the unique index allows one) with a warning.
    """
    butler = Butler(input_root)
    if not butler.input_root.is_dir():
        raise InputError(f"{input_root}: input repository not found")
    target = butler.input_root / REGISTRY_FILE
    found = butler.input_frames()
    if not found:
        raise InputError(f"{input_root}: no fpC file under <run>/<rerun>/corr/<camcol>/; registry not written")
    reuse = _existing_rows(target) if update and target.exists() else {}
    frames: dict[tuple[int, str, int, int], DataId] = {}
    for data_id in found:
        key = (data_id.run, data_id.filter, data_id.camcol, data_id.field)
        kept = frames.get(key)
        if kept is not None:
            newer, older = (data_id, kept) if (data_id.rerun or 0) > (kept.rerun or 0) else (kept, data_id)
            log.warning("frame %s is present in reruns %s and %s: the registry lists rerun %s", data_id.label(),
                        older.rerun, newer.rerun, newer.rerun)
            data_id = newer
        frames[key] = data_id
    rows: list[RawRow] = []
    errors: list[InputError] = []
    headers_read = 0
    for data_id in sorted(frames.values(), key=_row_order):
        known = reuse.get((data_id.run, data_id.rerun or 0, data_id.filter, data_id.camcol, data_id.field))
        if known is not None:
            rows.append(RawRow(data_id, *known))
            continue
        try:
            rows.append(raw_row(butler.path("fpC", data_id), data_id))
        except InputError as err:
            errors.append(err)
            continue
        headers_read += 1
    write_registry(target, rows)
    write_mapper(butler.input_root / MAPPER_FILE)
    return GenRegistryResult(target, len(rows), headers_read, errors)


def _row_order(data_id: DataId) -> tuple[int, ...]:
    return (data_id.run, data_id.rerun or 0, data_id.camcol, data_id.field, data_id.filter_index)


def write_registry(path: Path, rows: Iterable[RawRow]) -> None:
    """Write a registry of `rows` at `path` atomically (a temporary file in the same directory, renamed)."""
    with atomic_path(path) as tmp:
        conn = sqlite3.connect(tmp)
        try:
            conn.execute("PRAGMA journal_mode = OFF")  # a temporary file: a crash discards it anyway
            conn.execute("PRAGMA synchronous = OFF")
            for statement in SCHEMA:
                conn.execute(statement)
            for row in rows:
                row_id = conn.execute(INSERT, row.values()).lastrowid
                conn.executemany(INSERT_TILE, ((row_id, tile) for tile in row.sky_tiles))
            for statement in INDICES:
                conn.execute(statement)
            conn.commit()
        finally:
            conn.close()


def write_mapper(path: Path) -> None:
    """Write `_mapper` naming the SDSS mapper, as the 2013 input repository had it (kept if already so)."""
    text = SDSS_MAPPER + "\n"
    if path.is_file() and path.read_text() == text:
        return
    with atomic_path(path) as tmp:
        tmp.write_text(text)
