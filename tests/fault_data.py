"""Corrupted copies of the SDSS demo input repository, for the fault-matrix tests.

A copy mirrors the demo `input/` directory with real directories and symbolic links to the original files;
a corruption replaces one link by a real, modified file, so a case costs a few kilobytes except for
the file it breaks.
"""

from __future__ import annotations

import gzip
import io
import os
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
from astropy.io import fits

RUN_DIR = "4192/40"
FPC_Z = f"{RUN_DIR}/corr/4/fpC-004192-z4-0300.fit.gz"
FPM_Z = f"{RUN_DIR}/objcs/4/fpM-004192-z4-0300.fit"
TSFIELD = f"{RUN_DIR}/calibChunks/4/tsField-004192-4-40-0300.fit"
PSFIELD = f"{RUN_DIR}/objcs/4/psField-004192-4-0300.fit"
ASTRANS = f"{RUN_DIR}/astrom/asTrans-004192.fit"
Z_INDEX = 4  # z in the ugriz arrays of tsField and psField (HDU 5)
ASTRANS_Z_HDU = 19  # camcol 4 (4th of '1 2 3 4 5 6') x 5 filters + 'z' (4th of 'r i u z g')
FPM_CR_HDU = 10  # S_MASK_CR = 9 in the name table -> HDU 10


def mirror_input(source: Path, destination: Path) -> Path:
    """Directories of `source` recreated under `destination`, files linked; returns `destination`."""
    for directory, _subdirectories, files in os.walk(source):
        target = destination / Path(directory).relative_to(source)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            (target / name).symlink_to(Path(directory, name).resolve())
    return destination


def replace_bytes(repo: Path, relpath: str, data: bytes) -> None:
    """Replace the file at `relpath` (a link to the original) by a real file holding `data`."""
    path = repo / relpath
    path.unlink()
    path.write_bytes(data)


def original_bytes(repo: Path, relpath: str) -> bytes:
    return (repo / relpath).read_bytes()


def edit_fits(repo: Path, relpath: str, edit: Callable[[fits.HDUList], fits.HDUList | None]) -> None:
    """Rewrite the FITS file at `relpath` after `edit(hdul)` (which edits in place or returns a new list).

    A `.gz` file is written gzip-compressed again.
    """
    stream = io.BytesIO()
    with fits.open(repo / relpath, memmap=False) as hdul:
        for hdu in hdul:
            _ = hdu.data  # loaded before the edit
        edited = edit(hdul) or hdul
        edited.writeto(stream, output_verify="silentfix")
    data = stream.getvalue()
    replace_bytes(repo, relpath, gzip.compress(data, compresslevel=1) if relpath.endswith(".gz") else data)


def _fpc_image(repo: Path, relpath: str, image: np.ndarray) -> None:
    """Replace the fpC image by `image` (its dtype decides BITPIX), keeping the header cards."""
    def edit(hdul: fits.HDUList) -> fits.HDUList:
        header = hdul[0].header.copy()
        for key in ("BZERO", "BSCALE"):
            header.remove(key, ignore_missing=True)
        return fits.HDUList([fits.PrimaryHDU(image, header=header)])

    edit_fits(repo, relpath, edit)


def _set_column_value(relpath: str, hdu: int, column: str, value: float, index: tuple[int, ...] = ()
                      ) -> Callable[[Path], None]:
    def corrupt(repo: Path) -> None:
        def edit(hdul: fits.HDUList) -> None:
            hdul[hdu].data[column][0][index] = value

        edit_fits(repo, relpath, edit)

    return corrupt


def _set_header(relpath: str, hdu: int, key: str, value: object) -> Callable[[Path], None]:
    def corrupt(repo: Path) -> None:
        def edit(hdul: fits.HDUList) -> None:
            hdul[hdu].header[key] = value

        edit_fits(repo, relpath, edit)

    return corrupt


def _fpm_row0(repo: Path) -> None:
    """First span of the first INTERP row moved 30000 rows away from the 1489-row mask."""
    def edit(hdul: fits.HDUList) -> None:
        hdul[1].data["row0"][0] = -30000

    edit_fits(repo, FPM_Z, edit)


def _fpm_nspan(repo: Path) -> None:
    """nspan of a row no longer matches its span bytes."""
    def edit(hdul: fits.HDUList) -> None:
        hdul[1].data["nspan"][0] += 5

    edit_fits(repo, FPM_Z, edit)


def _garbage(n_bytes: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n_bytes)


# case name -> corruption of a mirrored repository (the z frame of run 4192 field 300, or a file it shares)
CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "fpC missing": lambda repo: (repo / FPC_Z).unlink(),
    "fpC truncated": lambda repo: replace_bytes(repo, FPC_Z, original_bytes(repo, FPC_Z)[:1_000_000]),
    "fpC not gzip": lambda repo: replace_bytes(repo, FPC_Z, b"this is a text file, not a gzipped FITS image\n" * 40),
    "fpC gzip of garbage": lambda repo: replace_bytes(repo, FPC_Z, gzip.compress(_garbage(200_000, 1))),
    "fpC wrong shape": lambda repo: _fpc_image(repo, FPC_Z, np.full((1000, 2048), 1000, np.int16)),
    "fpC float32 pixels": lambda repo: _fpc_image(repo, FPC_Z, np.full((1489, 2048), 1000.0, np.float32)),
    "fpC 8-bit pixels": lambda repo: _fpc_image(repo, FPC_Z, np.full((1489, 2048), 200, np.uint8)),
    "fpC EXPTIME not a number": _set_header(FPC_Z, 0, "EXPTIME", "long"),
    "fpM span bytes != nspan": _fpm_nspan,
    "fpM span out of range": _fpm_row0,
    "fpM plane HDU missing": lambda repo: edit_fits(repo, FPM_Z, lambda h: fits.HDUList(
        [hdu for i, hdu in enumerate(h) if i != FPM_CR_HDU])),
    "fpM not FITS": lambda repo: replace_bytes(repo, FPM_Z, _garbage(30_000, 2)),
    "tsField gain zero": _set_column_value(TSFIELD, 1, "gain", 0.0, (Z_INDEX,)),
    "tsField gain negative": _set_column_value(TSFIELD, 1, "gain", -4.7, (Z_INDEX,)),
    "tsField gain NaN": _set_column_value(TSFIELD, 1, "gain", np.nan, (Z_INDEX,)),
    "tsField RUN not a number": _set_header(TSFIELD, 0, "RUN", "four thousand"),
    "psField NaN coefficients": _set_column_value(PSFIELD, Z_INDEX + 1, "c", np.nan, (0, 0)),
    "psField filter HDU missing": lambda repo: edit_fits(repo, PSFIELD, lambda h: h[: Z_INDEX + 1]),
    "asTrans field row missing": lambda repo: edit_fits(repo, ASTRANS, lambda h: _drop_field_row(h, 300)),
    "asTrans camcol/filter HDU missing": lambda repo: edit_fits(repo, ASTRANS, lambda h: h[:ASTRANS_Z_HDU]),
    "asTrans CAMCOL not a number": _set_header(ASTRANS, ASTRANS_Z_HDU, "CAMCOL", "four"),
}

# cases whose corrupt file is shared by every filter of the field: both 4192 frames fail
# a bad z gain stops only the z frame; a bad primary header stops every frame of the field
FIELD_WIDE = {"tsField RUN not a number"}

CORRUPT_FILE = {name: FPC_Z for name in CORRUPTIONS if name.startswith("fpC")}
CORRUPT_FILE |= {name: FPM_Z for name in CORRUPTIONS if name.startswith("fpM")}
CORRUPT_FILE |= {name: TSFIELD for name in CORRUPTIONS if name.startswith("tsField")}
CORRUPT_FILE |= {name: PSFIELD for name in CORRUPTIONS if name.startswith("psField")}
CORRUPT_FILE |= {name: ASTRANS for name in CORRUPTIONS if name.startswith("asTrans")}


def _drop_field_row(hdul: fits.HDUList, field: int) -> None:
    table = hdul[ASTRANS_Z_HDU]
    hdul[ASTRANS_Z_HDU] = fits.BinTableHDU(table.data[table.data["field"] != field], header=table.header)


def constant_fpc(repo: Path, value: int) -> None:
    """The z fpC with every pixel `value` DN (uint16 via BZERO as in real fpC files)."""
    _fpc_image(repo, FPC_Z, np.full((1489, 2048), value, np.float64).astype(np.uint16))

