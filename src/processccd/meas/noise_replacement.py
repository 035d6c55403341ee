"""Replace source footprints by noise during measurement (measurement-spec.md §3, "Noise replacement")."""

from __future__ import annotations

import math
from functools import cached_property, lru_cache

import numpy as np

from processccd.background import clipped_stats

# --- GSL-compatible ziggurat Gaussian (Marsaglia & Tsang 2000 in J. Voss's variant, GSL >= 1.8) ---------
# 128 strips of equal area V under f(x) = exp(-x²/2): strips 0..126 are rectangles of width x[i+1] between
# heights y[i+1] and y[i] (y[0] = 1, y[127] = f(R)); strip 127 is the rectangle [0, R] x [0, f(R)] plus an
# exponential majorant of the tail, e^{-R(x - R/2)} for x > R, of area f(R)/R. Hence V = R f(R) + f(R)/R,
# and R is the root that makes the strips stack exactly to y[0] = 1. The tables are published with 12
# significant digits (GSL's ziggurat note quotes R = 3.44428647676), so y and w are rounded to 12 digits.
ZIGGURAT_STRIPS = 128
ZIGGURAT_R_PUBLISHED = 3.44428647676  # the tail start as used in the tail formula
_TWO24 = float(2**24)
_TWO32 = 4294967296.0


def _strip_edges(tail_start: float) -> tuple[list[float], float, float]:
    """x[i] (i = 1..127, x[0] = 0) of the equal-area strips, the strip area V and the implied y[0]."""
    area = tail_start * math.exp(-0.5 * tail_start**2) * (1.0 + 1.0 / tail_start**2)
    edges = [0.0] * ZIGGURAT_STRIPS
    edges[-1] = tail_start
    height = math.exp(-0.5 * tail_start**2)
    for i in range(ZIGGURAT_STRIPS - 1, 0, -1):
        height += area / edges[i]
        if i > 1:
            edges[i - 1] = math.sqrt(-2.0 * math.log(height)) if height < 1.0 else math.nan
    return edges, area, height


@lru_cache(maxsize=1)
def ziggurat_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(k, w, y) tables: fast-accept limits (24-bit ints), x per unit of j, strip heights."""
    from scipy.optimize import brentq  # on first use: reading the configuration needs no scipy

    tail_start = brentq(lambda r: _strip_edges(r)[2] - 1.0, 3.444, 3.45, xtol=1e-15)
    edges, area, _ = _strip_edges(tail_start)
    f_tail = math.exp(-0.5 * tail_start**2)
    heights = [1.0] + [math.exp(-0.5 * x * x) for x in edges[1:]]
    widths = [edges[i + 1] / _TWO24 for i in range(ZIGGURAT_STRIPS - 1)] + [area / f_tail / _TWO24]
    limits = [0] + [math.floor(_TWO24 * edges[i] / edges[i + 1]) for i in range(1, ZIGGURAT_STRIPS - 1)]
    limits.append(math.floor(_TWO24 * tail_start * f_tail / area))
    round12 = np.vectorize(lambda v: float(f"{v:.12g}"))
    return np.array(limits, dtype=np.int64), round12(widths), round12(heights)


def ziggurat_normals(count: int, seed: int = 1) -> np.ndarray:
    """`count` N(0,1) deviates as GSL's gsl_ran_gaussian_ziggurat(r, 1.0) with r = mt19937 seeded `seed`.

    Each attempt takes one 32-bit word k: strip i = k & 0x7f, sign = + if k & 0x80 else −, j = k >> 8
    (24 bits), x = j·w[i]; accepted at once when j < k[i]. Otherwise strips < 127 draw one uniform U
    (next word / 2^32) for y = y[i+1] + (y[i] − y[i+1])·U, strip 127 draws U1, U2 for the tail
    x = R − ln(1 − U1)/R, y = e^{−R(x − R/2)}·U2; accepted when y < e^{−x²/2}, else a new attempt.
    Vectorised: every word is evaluated as a possible attempt start, then the few slow attempts are
    walked in order to drop the words they consume.
    """
    limits, widths, heights = ziggurat_tables()
    gsl_seed = seed if seed != 0 else 4357  # GSL's mt19937 replaces seed 0 by its default 4357
    generator = np.random.RandomState(gsl_seed)  # MT19937 with init_genrand seeding, like GSL's mt19937
    words = np.empty(0, dtype=np.int64)
    values = np.empty(0)
    while True:
        extra = max(count - len(values), 0) + count // 16 + 64
        more = generator.randint(0, 2**32, size=extra, dtype=np.uint32).astype(np.int64)
        words = np.concatenate([words, more])
        values, complete = _ziggurat_from_words(words, limits, widths, heights)
        if complete and len(values) >= count:
            return values[:count]


def _ziggurat_from_words(
    words: np.ndarray, limits: np.ndarray, widths: np.ndarray, heights: np.ndarray
) -> tuple[np.ndarray, bool]:
    """All deviates the word stream yields (attempts whose uniforms lie beyond the stream are dropped)."""
    strip = words & 0x7F
    sign = np.where(words & 0x80, 1.0, -1.0)
    j = words >> 8
    x = j * widths[strip]
    fast = j < limits[strip]
    accepted = fast.copy()
    is_start = np.ones(len(words), dtype=bool)
    tail = ZIGGURAT_R_PUBLISHED
    last_start = len(words) - 1
    for p in np.flatnonzero(~fast).tolist():
        if not is_start[p]:
            continue  # this word was consumed as a uniform by an earlier slow attempt
        i = int(strip[p])
        used = 2 if i < ZIGGURAT_STRIPS - 1 else 3
        if p + used > len(words):
            last_start = p - 1
            break
        is_start[p + 1 : p + used] = False
        if i < ZIGGURAT_STRIPS - 1:
            y = heights[i + 1] + (heights[i] - heights[i + 1]) * (int(words[p + 1]) / _TWO32)
            value = float(x[p])
        else:
            value = tail - math.log(1.0 - int(words[p + 1]) / _TWO32) / tail
            y = math.exp(-tail * (value - 0.5 * tail)) * (int(words[p + 2]) / _TWO32)
            x[p] = value
        accepted[p] = y < math.exp(-0.5 * value * value)
    keep = is_start & accepted
    keep[last_start + 1 :] = False
    return (sign * x)[keep], last_start == len(words) - 1


def python27_dict_order(keys: np.ndarray) -> np.ndarray:
    """Positions of `keys` (distinct non-negative ints < 2^63) in the iteration order of a CPython 2.7
    dict built by inserting them in the given order.

    The 2013 replaceWithNoise kept the footprints in a dict keyed by source id and drew their noise in
    `dict.keys()` order. CPython 2.7: hash(n) = n; slot = hash & mask, probing
    slot ← (5·slot + 1 + perturb) & mask, perturb ← perturb >> 5 (perturb starts at the hash); after an
    insertion that makes 3·used ≥ 2·size the table is rebuilt (old slot order) with the smallest
    power-of-two size (≥ 8) above 4·used (2·used beyond 50 000 entries); iteration follows the slots.
    """
    keys = [int(k) for k in np.asarray(keys).ravel()]
    size = 8
    table: list[int | None] = [None] * size

    def place(position: int, slots: list[int | None]) -> None:
        mask = len(slots) - 1
        slot = keys[position] & mask
        perturb = keys[position]
        while slots[slot] is not None:
            slot = (5 * slot + 1 + perturb) & mask
            perturb >>= 5
        slots[slot] = position

    for used, position in enumerate(range(len(keys)), start=1):
        place(position, table)
        if 3 * used >= 2 * size:
            minimum = (2 if used > 50_000 else 4) * used
            size = 8
            while size <= minimum:
                size *= 2
            old, table = table, [None] * size
            for entry in old:
                if entry is not None:
                    place(entry, table)
    return np.array([entry for entry in table if entry is not None], dtype=np.int64)


class NoiseReplacer:
    """Swap every footprint's pixels for Gaussian noise, and individual footprints back in and out.

    `image` is modified IN PLACE: on construction the pixels of all footprints become noise
    N(mean, sd), mean/sd = 3-pass clipped statistics of the whole image (taken before replacement,
    `processccd.background.clipped_stats`).
    Footprint pixels are given as concatenated lists: pixel j belongs to footprint `footprint_index[j]`
    (0..n−1) and lies at (xs[j], ys[j]); footprints must not overlap. Noise is drawn over each
    footprint's bounding box (rows upward, x increasing within a row), footprints in index order, from
    one generator seeded `seed`; only the footprint pixels of each box are used. `draw_order` (a
    permutation of the footprint indices) changes the order in which the boxes are drawn: the 2013 stack
    drew them in Python-2 dict order of the source ids, `python27_dict_order(ids)`.

    Random numbers: `ziggurat_normals` (bit-identical to GSL's mt19937 + ziggurat Gaussian, as afw's
    Random used in 2013); each value is cast to float32, multiplied by sd and offset by the mean in
    float32, as afw filled its noise image.
    """

    def __init__(
        self,
        image: np.ndarray,
        footprint_index: np.ndarray,
        ys: np.ndarray,
        xs: np.ndarray,
        seed: int = 1,
        n_footprints: int | None = None,
        draw_order: np.ndarray | None = None,
    ) -> None:
        footprint_index = np.asarray(footprint_index, dtype=np.int64)
        ys = np.asarray(ys, dtype=np.int64)
        xs = np.asarray(xs, dtype=np.int64)
        if n_footprints is None:
            n_footprints = int(footprint_index.max()) + 1 if len(footprint_index) else 0
        order = np.argsort(footprint_index, kind="stable")
        self._image = image
        self._index = footprint_index[order]
        self._ys = ys[order]
        self._xs = xs[order]
        self._starts = np.searchsorted(self._index, np.arange(n_footprints + 1))
        stats = clipped_stats(image)
        self.mean, self.stdev = stats.mean, stats.stdev
        self._original = image[self._ys, self._xs].copy()
        if draw_order is None:
            draw_order = np.arange(n_footprints)
        draw_order = np.asarray(draw_order, dtype=np.int64)
        if not np.array_equal(np.sort(draw_order), np.arange(n_footprints)):
            raise ValueError("draw_order must be a permutation of the footprint indices")
        self._noise = self._draw_noise(n_footprints, seed, draw_order).astype(image.dtype)
        image[self._ys, self._xs] = self._noise

    @property
    def n_footprints(self) -> int:
        return len(self._starts) - 1

    def _draw_noise(self, n_footprints: int, seed: int, draw_order: np.ndarray) -> np.ndarray:
        """Noise value of every (sorted) footprint pixel, drawn box by box from one generator."""
        counts = np.diff(self._starts)
        has_pixels = counts > 0
        x0 = np.full(n_footprints, 0)
        y0 = np.full(n_footprints, 0)
        box_width = np.zeros(n_footprints, dtype=np.int64)
        box_height = np.zeros(n_footprints, dtype=np.int64)
        starts = self._starts[:-1][has_pixels]
        x0[has_pixels] = np.minimum.reduceat(self._xs, starts)
        y0[has_pixels] = np.minimum.reduceat(self._ys, starts)
        box_width[has_pixels] = np.maximum.reduceat(self._xs, starts) - x0[has_pixels] + 1
        box_height[has_pixels] = np.maximum.reduceat(self._ys, starts) - y0[has_pixels] + 1
        box_area = box_width * box_height
        box_offset = np.empty(n_footprints, dtype=np.int64)
        box_offset[draw_order] = np.cumsum(box_area[draw_order]) - box_area[draw_order]
        normals = ziggurat_normals(int(box_area.sum()), seed)
        index = self._index
        position = box_offset[index] + (self._ys - y0[index]) * box_width[index] + (self._xs - x0[index])
        noise = normals[position].astype(np.float32)
        noise *= np.float32(self.stdev)
        noise += np.float32(self.mean)
        return noise

    def _slice(self, i: int) -> slice:
        if not 0 <= i < self.n_footprints:
            raise IndexError(f"footprint {i} out of range 0..{self.n_footprints - 1}")
        return slice(int(self._starts[i]), int(self._starts[i + 1]))

    def insert(self, i: int) -> None:
        """Restore footprint i's original pixels."""
        part = self._slice(i)
        self._image[self._ys[part], self._xs[part]] = self._original[part]

    def remove(self, i: int) -> None:
        """Put footprint i's noise back."""
        part = self._slice(i)
        self._image[self._ys[part], self._xs[part]] = self._noise[part]

    def footprint_deltas(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(footprint index, ys, xs, original - noise) of every footprint pixel (arrays shared by every call:
        read them, do not modify them).

        With all footprints noised, adding footprint i's deltas gives the image source i is measured on:
        linear measurements of all sources can then be made at once.
        """
        return self._index, self._ys, self._xs, self._deltas

    @cached_property
    def _deltas(self) -> np.ndarray:
        """original - noise of every footprint pixel, float64 (the measurement steps each ask for it)."""
        return self._original.astype(np.float64) - self._noise

    def extended(self, extra_index: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> NoiseReplacer:
        """A replacer of the same image and noise with footprints n..n+m-1 added (extra_index 0..m-1), made of
        pixels of the existing footprints (deblended children, or any sub-footprints): inserting one restores
        only its own pixels, its deltas are those of its pixels. The noise is not drawn again."""
        width = int(max(self._xs.max(initial=0), np.max(xs, initial=0))) + 1
        flat = self._ys * width + self._xs
        sorter = np.argsort(flat)
        extra_flat = np.asarray(ys, dtype=np.int64) * width + np.asarray(xs, dtype=np.int64)
        position = sorter[np.searchsorted(flat, extra_flat, sorter=sorter)]
        if not np.array_equal(flat[position], extra_flat):
            raise ValueError("extra footprints must be made of pixels of the existing footprints")
        n = self.n_footprints
        extra_index = np.asarray(extra_index, dtype=np.int64)
        m = int(extra_index.max()) + 1 if len(extra_index) else 0
        order = np.argsort(extra_index, kind="stable")
        new = object.__new__(NoiseReplacer)
        new._image, new.mean, new.stdev = self._image, self.mean, self.stdev
        new._index = np.concatenate([self._index, extra_index[order] + n])
        new._ys = np.concatenate([self._ys, self._ys[position][order]])
        new._xs = np.concatenate([self._xs, self._xs[position][order]])
        new._starts = np.searchsorted(new._index, np.arange(n + m + 1))
        new._original = np.concatenate([self._original, self._original[position][order]])
        new._noise = np.concatenate([self._noise, self._noise[position][order]])
        return new

    def end(self) -> None:
        """Restore the original pixels of every footprint."""
        self._image[self._ys, self._xs] = self._original


def deltas_by_source(footprint_deltas: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None, count: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`NoiseReplacer.footprint_deltas()` (or None: nothing replaced) as (starts, ys, xs, deltas) with source
    i's pixels at [starts[i], starts[i + 1]) — the layout the compiled per-source kernels take."""
    if footprint_deltas is None:
        empty = np.zeros(0, dtype=np.int64)
        return np.zeros(count + 1, dtype=np.int64), empty, empty, np.zeros(0)
    source, ys, xs, deltas = footprint_deltas
    return np.searchsorted(source, np.arange(count + 1)), ys, xs, deltas
