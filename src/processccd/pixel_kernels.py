"""Compiled (numba) whole-image loops of background estimation, detection and deblending.

Each kernel gives exactly what the numpy/scipy computation it replaced gave; only the speed differs:

* `float32_order_statistics`: exact order statistics of a float32 array by radix select on the monotone
  integer image of the IEEE bits (counting only; see its docstring).
* `split_core`: the float64 offsets from a reference of the values inside a window (into a caller's
  buffer), and the values outside.
* `unmasked_values`: the pixels of an image cell whose mask has none of the given bits, in raster order.
* `smooth_symmetric`: scipy.ndimage.correlate1d along x then y with a symmetric odd kernel, restricted to
  the fully covered region, with scipy's float64 line arithmetic (x_0 w_0, then the pairs (x_-j + x_j) w_j
  from the outermost in, no fused multiply-add) and float32 rounding after each pass.
* `threshold_spans`: runs of pixels >= a threshold, row by row.
* `or_diamonds`: a mask bit set on runs dilated by a Manhattan ball.
* `split_possible`: whether multi-threshold deblending can split a footprint at all (union-find of its pixels
  by value descending; deblending).

Imported lazily (numba's import costs ~0.3 s, which `process-ccd --help` should not pay); `cache=True` keeps
the compiled code beside this file between runs.
"""

from __future__ import annotations

import numba
import numpy as np

_BUCKET_BITS = 16
_N_BUCKETS = 1 << _BUCKET_BITS
_SIGN = np.uint32(0x80000000)
_ALL = np.uint32(0xFFFFFFFF)
_INF_BITS = np.uint32(0x7F800000)  # larger magnitude bits are NaN
_FINITE_BUCKETS = (0x0080, 0xFF7F)  # the top-16-bit buckets of the sort keys of finite values


@numba.njit(cache=True, error_model="numpy")
def _sort_key(bits: np.uint32) -> np.uint32:
    """Unsigned integer in the order of the float32 with IEEE bits `bits` (-0.0 taken as +0.0); branch-free."""
    bits = bits if bits != _SIGN else np.uint32(0)
    return np.uint32(bits ^ (np.uint32(np.uint32(0) - (bits >> np.uint32(31))) | _SIGN))


@numba.njit(cache=True, error_model="numpy")
def _bits_of_key(key: np.uint32) -> np.uint32:
    """Inverse of `_sort_key`."""
    if key & _SIGN:
        return key & ~_SIGN
    return key ^ _ALL


@numba.njit(cache=True, error_model="numpy")
def _locate(counts: np.ndarray, ranks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per rank (increasing): the bin of the 1-D histogram `counts` it falls in, and its rank inside that bin."""
    bins = np.empty(ranks.size, dtype=np.int64)
    inner = np.empty(ranks.size, dtype=np.int64)
    below = 0
    b = 0
    for r in range(ranks.size):
        while below + counts[b] <= ranks[r]:
            below += counts[b]
            b += 1
        bins[r] = b
        inner[r] = ranks[r] - below
    return bins, inner


@numba.njit(cache=True, error_model="numpy")
def float32_order_statistics(values: np.ndarray, ranks: np.ndarray) -> tuple[bool, np.ndarray]:
    """(True, the values of 0-based rank `ranks` in sorted `values`) for a 1-D float32 array without NaN;
    (False, undefined) when `values` holds a NaN. `ranks` (fewer than 65535) must be increasing and lie in
    [0, values.size). -0.0 counts as +0.0 (so a zero order statistic comes out as +0.0).

    Radix select on the sort keys, counting only: a histogram of the top 16 bits of all keys; the keys in
    the wanted top-16 bins are gathered (branch-free), then histograms of their next 8 bits per wanted bin,
    and of their last 8 bits per wanted 24-bit prefix, pin each rank down.
    """
    keys = values.view(np.uint32)
    n_ranks = ranks.size
    result = np.zeros(n_ranks, dtype=np.float32)
    counts = np.zeros(_N_BUCKETS, dtype=np.int64)
    for i in range(keys.size):
        counts[_sort_key(keys[i]) >> _BUCKET_BITS] += 1
    if counts[:_FINITE_BUCKETS[0]].sum() + counts[_FINITE_BUCKETS[1] + 1:].sum() > 0:  # ±inf or NaN: look
        for i in range(keys.size):
            if (keys[i] & ~_SIGN) > _INF_BITS:
                return False, result
    bucket, rank_in_bucket = _locate(counts, ranks)
    slot_of_bucket = np.zeros(_N_BUCKETS, dtype=np.uint16)  # 0: not wanted, else 1 + slot
    n_slots = 0
    n_gathered = 0
    for r in range(n_ranks):
        if slot_of_bucket[bucket[r]] == 0:
            n_slots += 1
            slot_of_bucket[bucket[r]] = n_slots
            n_gathered += counts[bucket[r]]
    gathered = np.empty(n_gathered + 1, dtype=np.uint32)  # every key is written, the unwanted overwritten
    n = 0
    for i in range(keys.size):
        key = _sort_key(keys[i])
        gathered[n] = key
        n += slot_of_bucket[key >> _BUCKET_BITS] != 0
    gathered = gathered[:n_gathered]
    middle_counts = np.zeros((n_slots + 1, 256), dtype=np.int64)
    for key in gathered:
        middle_counts[slot_of_bucket[key >> _BUCKET_BITS], (key >> np.uint32(8)) & np.uint32(255)] += 1
    group_of_prefix = np.zeros((n_slots + 1, 256), dtype=np.uint16)  # 0: not wanted, else 1 + group
    middle = np.empty(n_ranks, dtype=np.int64)
    rank_in_prefix = np.empty(n_ranks, dtype=np.int64)
    n_groups = 0
    for r in range(n_ranks):
        slot = slot_of_bucket[bucket[r]]
        digit, inner = _locate(middle_counts[slot], rank_in_bucket[r:r + 1])
        middle[r] = digit[0]
        rank_in_prefix[r] = inner[0]
        if group_of_prefix[slot, middle[r]] == 0:
            n_groups += 1
            group_of_prefix[slot, middle[r]] = n_groups
    low_counts = np.zeros((n_groups + 1, 256), dtype=np.int64)
    for key in gathered:
        group = group_of_prefix[slot_of_bucket[key >> _BUCKET_BITS], (key >> np.uint32(8)) & np.uint32(255)]
        low_counts[group, key & np.uint32(255)] += 1
    found = np.empty(1, dtype=np.uint32)
    for r in range(n_ranks):
        group = group_of_prefix[slot_of_bucket[bucket[r]], middle[r]]
        low, _ = _locate(low_counts[group], rank_in_prefix[r:r + 1])
        found[0] = _bits_of_key(np.uint32((bucket[r] << _BUCKET_BITS) | (middle[r] << 8) | low[0]))
        result[r] = found.view(np.float32)[0]
    return True, result


@numba.njit(cache=True, error_model="numpy")
def split_core(values: np.ndarray, lo: float, hi: float, reference: float, core: np.ndarray
               ) -> tuple[int, np.ndarray]:
    """Write float64(v) - reference for the v in [lo, hi] to core[:n] (`core`: float64, >= values.size
    elements; the rest of it is scratch) and return (n, the other v); both in input order; branch-free."""
    rest = np.empty(values.size + 1, dtype=values.dtype)  # every value is written to both, then kept in one
    n_core = 0
    n_rest = 0
    for i in range(values.size):
        v = np.float64(values[i])
        inside = (v >= lo) & (v <= hi)
        core[n_core] = v - reference
        rest[n_rest] = values[i]
        n_core += inside
        n_rest += 1 - inside
    return n_core, rest[:n_rest]


@numba.njit(cache=True, error_model="numpy")
def unmasked_values(image: np.ndarray, mask: np.ndarray, bits: int, y0: int, y1: int, x0: int, x1: int
                    ) -> np.ndarray:
    """The pixels of image[y0:y1, x0:x1] where `mask & bits` is 0, in raster order (branch-free)."""
    selected = np.empty((y1 - y0) * (x1 - x0) + 1, dtype=image.dtype)
    n = 0
    for y in range(y0, y1):
        image_row = image[y, x0:x1]
        mask_row = mask[y, x0:x1]
        for x in range(x1 - x0):
            selected[n] = image_row[x]
            n += (mask_row[x] & bits) == 0
    return selected[:n]


@numba.njit(cache=True, error_model="numpy")
def smooth_symmetric(image: np.ndarray, taps: np.ndarray, border: int) -> np.ndarray:
    """float32 `image` correlated with the symmetric odd `taps` (len <= 2 border + 1) along x, then y, on the
    region shrunk by `border` on every side; float64 arithmetic and float32 rounding as scipy's correlate1d.

    The x-pass rows live in a ring of len(taps) rows (row r in slot r % len(taps)): output row y is made as
    soon as x-pass rows y .. y + len(taps) - 1 exist, so no full-frame intermediate image is kept."""
    half = taps.size // 2
    height, width = image.shape
    out_width = width - 2 * border
    out_height = height - 2 * border
    centre = taps[half]
    acc = np.empty(out_width, dtype=np.float64)
    along_x = np.empty((taps.size, out_width), dtype=np.float32)
    smoothed = np.empty((out_height, out_width), dtype=np.float32)
    for y in range(out_height + 2 * half):  # x-pass row y is image row border - half + y
        row = image[border - half + y, border:]
        for x in range(out_width):
            acc[x] = np.float64(row[x]) * centre
        for j in range(half, 0, -1):
            weight = taps[half - j]
            left = image[border - half + y, border - j:]
            right = image[border - half + y, border + j:]
            for x in range(out_width):
                acc[x] += (np.float64(left[x]) + np.float64(right[x])) * weight
        newest = along_x[y % taps.size]
        for x in range(out_width):
            newest[x] = np.float32(acc[x])
        out_y = y - 2 * half
        if out_y < 0:
            continue
        middle = along_x[(out_y + half) % taps.size]
        for x in range(out_width):
            acc[x] = np.float64(middle[x]) * centre
        for j in range(half, 0, -1):
            weight = taps[half - j]
            below = along_x[(out_y + half - j) % taps.size]
            above = along_x[(out_y + half + j) % taps.size]
            for x in range(out_width):
                acc[x] += (np.float64(below[x]) + np.float64(above[x])) * weight
        for x in range(out_width):
            smoothed[out_y, x] = np.float32(acc[x])
    return smoothed


@numba.njit(cache=True, error_model="numpy", inline="always")
def _in_run(value: np.number, threshold: np.number, at_most: bool) -> bool:
    """value <= threshold if `at_most`, else value >= threshold (False for NaN)."""
    return value <= threshold if at_most else value >= threshold


@numba.njit(cache=True, error_model="numpy")
def threshold_spans(image: np.ndarray, threshold: np.number, at_most: bool = False
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of pixels >= threshold (<= threshold if `at_most`; a scalar of the image dtype): (row, first x,
    last x inclusive), int64, in raster order."""
    height, width = image.shape
    starts_in_row = np.zeros(height, dtype=np.int64)
    for y in range(height):  # count first (branch-free), then fill the rows that have runs
        row = image[y]
        n_starts = np.int64(_in_run(row[0], threshold, at_most))
        for x in range(1, width):
            n_starts += _in_run(row[x], threshold, at_most) & (not _in_run(row[x - 1], threshold, at_most))
        starts_in_row[y] = n_starts
    n_spans = starts_in_row.sum()
    rows = np.empty(n_spans, dtype=np.int64)
    firsts = np.empty(n_spans, dtype=np.int64)
    lasts = np.empty(n_spans, dtype=np.int64)
    k = 0
    for y in range(height):
        if starts_in_row[y] == 0:
            continue
        row = image[y]
        x = 0
        while x < width:
            if _in_run(row[x], threshold, at_most):
                rows[k] = y
                firsts[k] = x
                while x < width and _in_run(row[x], threshold, at_most):
                    x += 1
                lasts[k] = x - 1
                k += 1
            x += 1
    return rows, firsts, lasts


@numba.njit(cache=True, error_model="numpy")
def or_diamonds(mask: np.ndarray, rows: np.ndarray, firsts: np.ndarray, lasts: np.ndarray, radius: int,
                bit: int) -> None:
    """Set `bit` in `mask` on the runs (row, first x, last x) dilated by the Manhattan ball of `radius`,
    clipped to the array: on row offset dy a run widens by radius - |dy| on each side."""
    height, width = mask.shape
    for k in range(rows.size):
        for dy in range(-radius, radius + 1):
            y = rows[k] + dy
            if y < 0 or y >= height:
                continue
            reach = radius - abs(dy)
            for x in range(max(firsts[k] - reach, 0), min(lasts[k] + reach, width - 1) + 1):
                mask[y, x] |= bit


@numba.njit(cache=True, error_model="numpy")
def _root(parent: np.ndarray, i: int) -> int:
    """The representative of i's set (union-find), halving the path on the way."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


@numba.njit(cache=True, error_model="numpy")
def split_possible(ys: np.ndarray, xs: np.ndarray, values: np.ndarray, source: np.ndarray, n_sources: int,
                   shape: tuple[int, int], min_pixels: int) -> np.ndarray:
    """Per footprint, whether some threshold t leaves two 8-connected components of its pixels > t with
    `min_pixels` pixels each: the condition for multi-threshold deblending to split it at any level.

    `ys`, `xs`, `values`: the footprints' pixels and their values, `source` their footprint. The pixels are
    added by value descending, joining the components (union-find); after each group of equal values the
    components are those of the pixels above the next lower value, where the footprints touched are checked.
    """
    n = len(ys)
    height, width = shape
    position = np.full((height, width), -1, dtype=np.int64)
    for p in range(n):
        position[ys[p], xs[p]] = p
    order = np.argsort(-values)
    parent = np.arange(n)
    size = np.zeros(n, dtype=np.int64)  # 0: not added yet
    large = np.zeros(n_sources, dtype=np.int64)  # components of >= min_pixels pixels per footprint
    possible = np.zeros(n_sources, dtype=np.bool_)
    touched = np.zeros(n, dtype=np.int64)
    n_touched = 0
    for k in range(n):
        p = order[k]
        size[p] = 1
        if min_pixels <= 1:
            large[source[p]] += 1
        for dy in range(-1, 2):
            for dx in range(-1, 2):
                ny, nx = ys[p] + dy, xs[p] + dx
                if (dy == 0 and dx == 0) or ny < 0 or ny >= height or nx < 0 or nx >= width:
                    continue
                q = position[ny, nx]
                if q < 0 or size[q] == 0 or source[q] != source[p]:
                    continue
                a, b = _root(parent, p), _root(parent, q)
                if a == b:
                    continue
                large[source[p]] += ((size[a] + size[b] >= min_pixels) - (size[a] >= min_pixels)
                                     - (size[b] >= min_pixels))
                if size[a] < size[b]:
                    a, b = b, a
                parent[b] = a
                size[a] += size[b]
        touched[n_touched] = source[p]
        n_touched += 1
        if k == n - 1 or values[order[k + 1]] != values[p]:  # a level set is complete
            for j in range(n_touched):
                if large[touched[j]] >= 2:
                    possible[touched[j]] = True
            n_touched = 0
    return possible
