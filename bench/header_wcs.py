"""The fpC header's TAN WCS against the asTrans solution, on the demo frames (issue 13).

    python bench/header_wcs.py [INPUT] [--outputs WITH_ASTRANS WITHOUT_ASTRANS]

For every frame of INPUT (default: input/ of the demo): the angular offset between the fpC header WCS (as
make_exposure builds it) and the exact asTrans transform, on a 101 x 71 grid over the trimmed frame (pixel
centres -0.5 ... size - 0.5), median and max [arcsec]; also with CRPIX read as 0-based, to show the pixel
convention. With --outputs (two process-ccd output trees of the same frames, made with and without asTrans),
also the src catalogues: rows with the same ids, and their coord differences (median, max) [arcsec].
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from astropy.coordinates import SkyCoord
from astropy.io import fits

from processccd.butler import Butler
from processccd.dataid import DataId
from processccd.wcs import _pixel_grid, wcs_from_fpc_header

FRAMES = [DataId(run, 4, field, band, 40) for run, field in ((4192, 300), (6377, 399)) for band in "ugriz"]


def header_offsets(butler: Butler, data_id: DataId) -> tuple[np.ndarray, np.ndarray]:
    """Offsets [arcsec] header WCS - asTrans on the grid, with CRPIX as FITS (1-based) and as 0-based."""
    fpc = butler.get("fpC", data_id)
    astrans = butler.get("asTrans", data_id)
    wcs = wcs_from_fpc_header(fpc.header, butler.path("fpC", data_id))
    x, y = _pixel_grid(2048, 1361, 101, 71)
    exact = SkyCoord(*astrans.pixel_to_sky(x, y), unit="deg")
    offsets = []
    for origin in (0, 1):  # origin 0: our x = FITS X - 1 (the calexp convention); 1: CRPIX read as 0-based
        ra, dec = wcs.all_pix2world(x, y, origin)
        offsets.append(exact.separation(SkyCoord(ra, dec, unit="deg")).arcsec)
    return offsets[0], offsets[1]


def src_differences(with_astrans: Path, without: Path, data_id: DataId) -> tuple[int, int, int, np.ndarray]:
    """(rows with, rows without, ids in common, coord offsets [arcsec] of the common ids)."""
    tables = []
    for root in (with_astrans, without):
        with fits.open(Butler(root, root).path("src", data_id)) as hdul:
            tables.append(hdul[1].data)
    a, b = tables
    common, ia, ib = np.intersect1d(a["id"], b["id"], return_indices=True)
    ca = SkyCoord(a["coord.ra"][ia], a["coord.dec"][ia], unit="deg")
    cb = SkyCoord(b["coord.ra"][ib], b["coord.dec"][ib], unit="deg")
    return len(a), len(b), len(common), ca.separation(cb).arcsec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", nargs="?", default="input", type=Path)
    parser.add_argument("--outputs", nargs=2, type=Path, metavar=("WITH_ASTRANS", "WITHOUT_ASTRANS"))
    args = parser.parse_args()
    butler = Butler(args.input)
    every_fits, every_zero, every_src = [], [], []
    print("frame        header-asTrans median / max [\"]   (CRPIX as 0-based: median)"
          + ("   src rows with / without / common   coord diff median / max [\"]" if args.outputs else ""))
    for data_id in FRAMES:
        fits_based, zero_based = header_offsets(butler, data_id)
        every_fits.append(fits_based)
        every_zero.append(zero_based)
        line = (f"{data_id.label():12s} {np.median(fits_based):8.4f} / {fits_based.max():.4f}"
                f"                 ({np.median(zero_based):.3f})")
        if args.outputs:
            n_a, n_b, n_common, diff = src_differences(*args.outputs, data_id)
            every_src.append(diff)
            line += f"   {n_a:5d} / {n_b:5d} / {n_common:5d}   {np.median(diff):.4f} / {diff.max():.4f}"
        print(line)
    fits_all, zero_all = np.concatenate(every_fits), np.concatenate(every_zero)
    print(f"all frames   {np.median(fits_all):8.4f} / {fits_all.max():.4f}                 "
          f"({np.median(zero_all):.3f})")
    if every_src:
        src_all = np.concatenate(every_src)
        print(f"all src rows: {len(src_all)} common, coord diff median {np.median(src_all):.4f}\" "
              f"max {src_all.max():.4f}\"")


if __name__ == "__main__":
    main()
