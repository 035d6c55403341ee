#!/usr/bin/env python
"""Compare two process-ccd output trees product by product: are the default products byte-identical?

    python bench/compare_products.py OUTPUT_A OUTPUT_B [--include-metadata]

Every file under `sci-results/` of A must exist in B with the same bytes (and B must have no extra file).
For a FITS file that differs, the first differing header card or data column/array is named, with the
largest absolute and relative difference, so that an intended change can be told from an accident.
The per-run metadata (`processCcd_metadata/`: timestamps, durations) is skipped unless asked for.
Exit status 0 when the products are identical, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from astropy.io import fits


def product_files(root: Path, include_metadata: bool) -> set[Path]:
    """The relative paths of the products under `root`."""
    files = {p.relative_to(root) for p in root.rglob("*") if p.is_file()}
    if not include_metadata:
        files = {p for p in files if "processCcd_metadata" not in p.parts and p.parts[0] != "qa"}
    return files


def describe_fits_difference(a: Path, b: Path) -> str:
    """The first difference between two FITS files, in words."""
    with fits.open(a) as ha, fits.open(b) as hb:
        if len(ha) != len(hb):
            return f"{len(ha)} vs {len(hb)} HDUs"
        for index, (x, y) in enumerate(zip(ha, hb, strict=True)):
            cards_x = [str(c) for c in x.header.cards]
            cards_y = [str(c) for c in y.header.cards]
            if cards_x != cards_y:
                for cx, cy in zip(cards_x, cards_y, strict=False):
                    if cx != cy:
                        return f"HDU {index} header: {cx.strip()!r} vs {cy.strip()!r}"
                return f"HDU {index} header: {len(cards_x)} vs {len(cards_y)} cards"
            if x.data is None or y.data is None:
                continue
            if isinstance(x, fits.BinTableHDU):
                for name in x.columns.names:
                    diff = _array_difference(np.asarray(x.data[name]), np.asarray(y.data[name]))
                    if diff:
                        return f"HDU {index} column {name}: {diff}"
            else:
                diff = _array_difference(np.asarray(x.data), np.asarray(y.data))
                if diff:
                    return f"HDU {index} ({x.name}) data: {diff}"
    return "bytes differ, values equal (layout or padding)"


def _array_difference(x: np.ndarray, y: np.ndarray) -> str:
    if x.shape != y.shape:
        return f"shape {x.shape} vs {y.shape}"
    if x.dtype.kind not in "fc":
        differ = int(np.count_nonzero(x != y))
        return f"{differ} values differ" if differ else ""
    same = (x == y) | (np.isnan(x) & np.isnan(y))
    differ = int(np.count_nonzero(~same))
    if not differ:
        return ""
    both = ~same & np.isfinite(x) & np.isfinite(y)
    if not both.any():
        return f"{differ} values differ (NaN pattern)"
    absdiff = np.abs(x[both] - y[both]).astype(float)
    reldiff = absdiff / np.maximum(np.abs(x[both]), np.abs(y[both])).astype(float)
    return f"{differ} values differ, max |diff| {absdiff.max():.3g}, max relative {reldiff.max():.3g}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--include-metadata", action="store_true", help="also compare processCcd_metadata/")
    args = parser.parse_args(argv)
    files_a = product_files(args.a, args.include_metadata)
    files_b = product_files(args.b, args.include_metadata)
    problems = [f"only in {args.a}: {p}" for p in sorted(files_a - files_b)]
    problems += [f"only in {args.b}: {p}" for p in sorted(files_b - files_a)]
    same = 0
    for rel in sorted(files_a & files_b):
        fa, fb = args.a / rel, args.b / rel
        if fa.read_bytes() == fb.read_bytes():
            same += 1
            continue
        if rel.name.endswith((".fits", ".fits.gz", ".fit")):
            problems.append(f"differs: {rel}: {describe_fits_difference(fa, fb)}")
        else:
            problems.append(f"differs: {rel}")
    for line in problems:
        print(line)
    print(f"{same} identical, {len(problems)} different or missing")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
