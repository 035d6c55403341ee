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

from processccd.gen_registry import gen_registry

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



# --- unfamiliar frames (issue 13 item 4): inputs the demo never shows, each with a documented outcome --------
TRAIL_ROWS = (150, 1250)  # a saturated star's bleed trail across the detection region of the z frame (rows,
TRAIL_COLUMNS = (699, 707)  # columns, inclusive), the star's core at its middle
TRAIL_DN = 60000.0  # raw DN on the trail (above the 4192 z saturation level), pedestal included


def astrans_ending_before(repo: Path, first_missing: int) -> None:
    """The run's asTrans ends before field `first_missing` (a field at the end of a run): every HDU loses it."""
    def edit(hdul: fits.HDUList) -> None:
        for index in range(1, len(hdul)):
            table = hdul[index]
            hdul[index] = fits.BinTableHDU(table.data[table.data["field"] < first_missing], header=table.header)

    edit_fits(repo, ASTRANS, edit)


def bleed_trail(repo: Path) -> None:
    """A saturated star with a vertical bleed trail in the z fpC, and its SATUR spans in the fpM."""
    (row0, row1), (col0, col1) = TRAIL_ROWS, TRAIL_COLUMNS
    centre_row, centre_col = (row0 + row1) // 2, (col0 + col1) // 2

    def edit_fpc(hdul: fits.HDUList) -> fits.HDUList:
        image = hdul[0].data.astype(np.float64)  # uint16 DN (BZERO applied)
        yy, xx = np.mgrid[: image.shape[0], : image.shape[1]]
        image += 2.0e5 * np.exp(-((yy - centre_row) ** 2 + (xx - centre_col) ** 2) / (2 * 3.0**2))
        image[row0 : row1 + 1, col0 + 2 : col1 - 1] = TRAIL_DN
        header = hdul[0].header.copy()
        for key in ("BZERO", "BSCALE"):
            header.remove(key, ignore_missing=True)
        return fits.HDUList([fits.PrimaryHDU(np.minimum(image, 65535).astype(np.uint16), header=header)])

    edit_fits(repo, FPC_Z, edit_fpc)

    def edit_fpm(hdul: fits.HDUList) -> None:
        names = [name.strip() for name in hdul[-1].data["attributeName"]]
        hdu = int(hdul[-1].data["Value"][names.index("S_MASK_SATUR")]) + 1
        old = hdul[hdu].data
        rows = np.arange(row0, row1 + 1)
        spans = np.column_stack([rows, np.full_like(rows, col0), np.full_like(rows, col1)]).astype(">i2")
        new = {"refcntr": 1, "nspan": len(rows), "row0": 0, "col0": 0, "rmin": row0, "rmax": row1, "cmin": col0,
               "cmax": col1, "npix": len(rows) * (col1 - col0 + 1)}
        columns = [fits.Column(name=name, format="1J", array=np.append(old[name], value))
                   for name, value in new.items()]
        s = [np.asarray(v, dtype=np.uint8) for v in old["s"]] + [np.frombuffer(spans.tobytes(), dtype=np.uint8)]
        columns.append(fits.Column(name="s", format="PB()", array=np.array(s, dtype=object)))
        hdul[hdu] = fits.BinTableHDU.from_columns(columns)

    edit_fits(repo, FPM_Z, edit_fpm)


def other_camcol(repo: Path, camcol: int, gain: float) -> None:
    """Copies of the 4192 field-300 z frame's fpC, fpM, psField and tsField as camcol `camcol` (headers
    changed), the tsField z gain set to `gain`: a camcol and a gain the demo never shows."""
    def rename(relpath: str) -> str:
        return (relpath.replace("/4/", f"/{camcol}/").replace("z4-", f"z{camcol}-")
                .replace("-4-", f"-{camcol}-"))

    for relpath in (FPC_Z, FPM_Z, PSFIELD, TSFIELD):
        target = repo / rename(relpath)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to((repo / relpath).resolve())

    def set_camcol(hdul: fits.HDUList) -> None:
        hdul[0].header["CAMCOL"] = camcol

    def set_camcol_and_gain(hdul: fits.HDUList) -> None:
        set_camcol(hdul)
        hdul[1].data["gain"][0][Z_INDEX] = gain

    for relpath, edit in ((FPC_Z, set_camcol), (PSFIELD, set_camcol), (TSFIELD, set_camcol_and_gain)):
        edit_fits(repo, rename(relpath), edit)
    gen_registry(repo)  # the new frame enters the input registry, as a user adding a camcol would do


def refcat_subset(stars_fits: Path, destination: Path, keep: Callable[[fits.FITS_rec], np.ndarray],
                  dec_shift: float = 0.0) -> Path:
    """The rows of stars.fits that `keep` selects, Dec moved by `dec_shift` degrees, in the same layout."""
    with fits.open(stars_fits) as hdul:
        data = hdul[1].data[keep(hdul[1].data)].copy()
        data["dec"] = data["dec"] + dec_shift
        fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU(data, header=hdul[1].header)]).writeto(destination)
    return destination


def stars_in_frame(relpath: str, repo: Path, magnitude: tuple[float, float], n: int, band: str = "z",
                   margin: float = 100.0) -> Callable[[fits.FITS_rec], np.ndarray]:
    """A `refcat_subset` selection: the first `n` stars of the catalogue with `band` in `magnitude` that lie
    inside the frame of the fpC at `relpath` (its header WCS), `margin` pixels from the edges."""
    from processccd.wcs import wcs_from_fpc_header

    header = fits.getheader(repo / relpath)
    wcs = wcs_from_fpc_header(header, relpath)

    def keep(data: fits.FITS_rec) -> np.ndarray:
        x, y = wcs.all_world2pix(np.mod(data["ra"], 360.0), data["dec"], 0)
        inside = (x > margin) & (x < 2048 - margin) & (y > margin) & (y < 1361 - margin)
        chosen = np.flatnonzero(inside & (data[band] > magnitude[0]) & (data[band] < magnitude[1]))[:n]
        selected = np.zeros(len(data), dtype=bool)
        selected[chosen] = True
        return selected

    return keep
