"""fpM reader: the PHOTO mask planes of one frame, rasterised from their spans (sdss-inputs.md §2)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from processccd.errors import InputError
from processccd.sdss.fits import BinTable, FitsFile, header_number, open_fits

PLANE_PREFIX = "S_MASK_"
SPAN_BYTES = 6  # one span = three big-endian int16: y, x1, x2
MAX_MASK_SIZE = 32767  # spans store coordinates as int16
# spans covering at most 1/SPARSE_FRACTION of the mask (counting overlaps) are painted pixel by pixel,
# denser ones through a running sum over the whole mask (bounded memory whatever the span count)
SPARSE_FRACTION = 4


def decode_spans(raw: bytes) -> np.ndarray:
    """The (n, 3) int64 array of spans (y, x1, x2) packed as big-endian int16 triples in `raw`."""
    if len(raw) % SPAN_BYTES:
        raise ValueError(f"span buffer of {len(raw)} bytes is not a multiple of {SPAN_BYTES}")
    return np.frombuffer(raw, dtype=">i2").reshape(-1, 3).astype(np.int64)


def _clipped_spans(spans: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(y, x1, x2) of the spans with x clipped to the image and the spans on rows outside it dropped."""
    nrow, ncol = shape
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 3)
    y = spans[:, 0]
    x1 = np.maximum(spans[:, 1], 0)
    x2 = np.minimum(spans[:, 2], ncol - 1)
    keep = (y >= 0) & (y < nrow) & (x1 <= x2)
    return y[keep], x1[keep], x2[keep]


def _flat_index(y: np.ndarray, x1: np.ndarray, x2: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
    """The flat index of every pixel of the clipped spans (repeated where they overlap), or None if they
    cover more than 1/SPARSE_FRACTION of the image (counting overlaps)."""
    nrow, ncol = shape
    lengths = x2 - x1 + 1
    n_pixels = int(lengths.sum())
    if n_pixels > nrow * ncol // SPARSE_FRACTION:
        return None
    first = y * ncol + x1
    return np.arange(n_pixels) + np.repeat(first - (np.cumsum(lengths) - lengths), lengths)


def rasterize_spans(spans: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Boolean image of `shape` with every pixel of the (y, x1, x2) spans (x inclusive) set.

    x is clipped to the image, spans on rows outside it are dropped.
    """
    nrow, ncol = shape
    y, x1, x2 = _clipped_spans(spans, shape)
    index = _flat_index(y, x1, x2, shape)
    if index is not None:  # sparse planes (all real ones): set the flat index of every covered pixel
        flat = np.zeros(nrow * ncol, dtype=bool)
        flat[index] = True
        return flat.reshape(nrow, ncol)
    # +1 at the first pixel of each span, -1 just past its last; a running sum > 0 marks covered pixels
    diff = np.zeros((nrow, ncol + 1), dtype=np.int32)
    np.add.at(diff, (y, x1), 1)
    np.add.at(diff, (y, x2 + 1), -1)
    return np.cumsum(diff[:, :ncol], axis=1) > 0


def paint_spans(mask: np.ndarray, spans: np.ndarray, bit: int) -> None:
    """OR `bit` into the pixels of the 2-d C-contiguous `mask` that the (y, x1, x2) spans cover (clipped to
    the mask as by `rasterize_spans`: a mask with fewer rows than the frame takes its first rows)."""
    if mask.ndim != 2 or not mask.flags.c_contiguous:
        raise ValueError("paint_spans needs a 2-d C-contiguous mask")
    shape = (mask.shape[0], mask.shape[1])
    value = mask.dtype.type(bit)
    index = _flat_index(*_clipped_spans(spans, shape), shape)
    if index is None:
        np.bitwise_or(mask, value, out=mask, where=rasterize_spans(spans, shape))
    else:  # a pixel listed twice gets the same value twice
        flat = mask.reshape(-1)
        flat[index] |= value


def _plane_spans(table: BinTable, path: Path, name: str, shape: tuple[int, int]) -> np.ndarray:
    """All spans of one plane table in frame coordinates (row0/col0 applied), as an (n, 3) array.

    Spans may overhang the mask (real fpM files have x1 = -1; rasterize_spans clips them); a span with
    x1 > x2, or one more than a whole mask size away from the (rows, columns) `shape`, is corrupt.
    """
    if len(table) == 0:
        return np.zeros((0, 3), dtype=np.int64)
    missing = [col for col in ("nspan", "row0", "col0", "s") if col not in table.names]
    if missing:
        raise InputError(f"{path}: plane {name}: columns {', '.join(missing)} missing")
    nspan = np.asarray(table.column("nspan"), dtype=np.int64)
    if np.any(nspan < 0):
        raise InputError(f"{path}: plane {name}: negative nspan")
    blobs, counts = table.variable_arrays("s")
    nbytes = counts * blobs.itemsize
    bad = np.flatnonzero(nbytes != SPAN_BYTES * nspan)
    if bad.size:
        i = int(bad[0])
        raise InputError(f"{path}: plane {name} row {i}: span data of {nbytes[i]} bytes, expected 6 x {nspan[i]} spans")
    spans = decode_spans(blobs.tobytes())
    spans[:, 0] -= np.repeat(np.asarray(table.column("row0"), dtype=np.int64), nspan)
    spans[:, 1:] -= np.repeat(np.asarray(table.column("col0"), dtype=np.int64), nspan)[:, None]
    y, x1, x2 = spans.T
    nrow, ncol = shape
    corrupt = (x1 > x2) | (y < -nrow) | (y >= 2 * nrow) | (x2 < -ncol) | (x1 >= 2 * ncol)
    if corrupt.any():
        bad_y, bad_x1, bad_x2 = spans[np.flatnonzero(corrupt)[0]]
        raise InputError(f"{path}: plane {name}: span (y={bad_y}, x={bad_x1}..{bad_x2}) is inverted or far outside "
                         f"the {nrow} x {ncol} mask ({int(corrupt.sum())} such spans)")
    return spans


def _plane_hdus(fits_file: FitsFile, path: Path) -> dict[str, int]:
    """Plane name (without S_MASK_) -> HDU index, from the name table in the last HDU."""
    table = fits_file.table(len(fits_file) - 1, "mask-plane name table") if len(fits_file) > 1 else None
    if table is None or not {"attributeName", "Value"} <= set(table.names):
        raise InputError(f"{path}: last HDU is not the mask-plane name table (attributeName, Value)")
    attributes, values = table.column("attributeName"), table.column("Value")
    if attributes.dtype.kind not in "SU" or values.dtype.kind not in "iu":
        raise InputError(f"{path}: mask-plane name table columns have types {attributes.dtype}, "
                         f"{values.dtype}; expected text and integer")
    hdus: dict[str, int] = {}
    for attribute, value in zip(attributes, values, strict=True):
        attribute = str(attribute).strip()
        if attribute.startswith(PLANE_PREFIX):
            hdus[attribute[len(PLANE_PREFIX) :]] = int(value) + 1
    return hdus


@dataclass(frozen=True)
class FpmSpans:
    """The mask planes of an fpM file as spans: plane name (without S_MASK_) -> (n, 3) array of (y, x1, x2)
    in frame coordinates, and the (MASKROWS, MASKCOLS) shape of the planes."""

    shape: tuple[int, int]
    spans: dict[str, np.ndarray]


def read_fpm_spans(path: str | Path, planes: Iterable[str] | None = None) -> FpmSpans:
    """The spans of the mask planes of an fpM file (all planes, or those named in `planes`), checked."""
    path = Path(path)
    with open_fits(path, "fpM") as fits_file:
        header = fits_file.hdul[0].header
        shape = (header_number(header, "MASKROWS", path, "the primary header", int),
                 header_number(header, "MASKCOLS", path, "the primary header", int))
        if not all(0 < n <= MAX_MASK_SIZE for n in shape):
            raise InputError(f"{path}: invalid mask size {shape[0]} x {shape[1]}")
        hdus = _plane_hdus(fits_file, path)
        wanted = list(hdus) if planes is None else list(planes)
        spans: dict[str, np.ndarray] = {}
        for name in wanted:
            if name not in hdus:
                raise InputError(f"{path}: mask plane {name} not in the plane name table")
            index = hdus[name]
            if not 1 <= index < len(fits_file) - 1:
                raise InputError(f"{path}: HDU {index} of mask plane {name} missing")
            table = fits_file.table(index, f"HDU {index} of mask plane {name}")
            spans[name] = _plane_spans(table, path, name, shape)
    return FpmSpans(shape, spans)

