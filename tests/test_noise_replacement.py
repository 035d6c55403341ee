"""NoiseReplacer and the clipped statistics it uses."""

from __future__ import annotations

import numpy as np
import pytest

from processccd.meas.noise_replacement import NoiseReplacer, python27_dict_order, ziggurat_normals

SKY_MEAN = 3.0
SKY_SIGMA = 5.0


def test_mt19937_seeding_matches_init_genrand() -> None:
    raw = np.random.RandomState(1)._bit_generator.random_raw(3)
    assert raw.tolist() == [1791095845, 4282876139, 3093770124]


# gsl_ran_gaussian_ziggurat(r, 1.0) with r = gsl_rng_mt19937 seeded 1 (values printed by libgsl 2.7)
GSL_FIRST = [-0.49192363822600427, -1.5460562802245437, 0.00042694841091477396, 0.08722184515017163,
             0.5142327983881565, 0.3651699727981886]
GSL_AT = {5414: 3.5671611825815637, 7118: -3.5834825474661596,  # the first two tail (|x| > R) values
          54321: 0.6619567248238942, 999999: 0.6114218729769187, 1999999: 0.14471037032979908}


def test_ziggurat_reproduces_gsl_bit_for_bit() -> None:
    values = ziggurat_normals(2_000_000, seed=1)
    assert values[:6].tolist() == GSL_FIRST
    assert {i: float(values[i]) for i in GSL_AT} == GSL_AT
    assert np.array_equal(ziggurat_normals(54322, seed=1), values[:54322])  # a prefix is the same stream
    assert abs(values.mean()) < 4e-3 and values.std() == pytest.approx(1.0, abs=2e-3)
    assert np.mean(np.abs(values) > 3.0) == pytest.approx(0.0027, rel=0.1)
    assert not np.array_equal(ziggurat_normals(10, seed=2), values[:10])


def scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A sky image with bright 'sources' in irregular (diamond and square) footprints."""
    image = rng.normal(SKY_MEAN, SKY_SIGMA, size=(200, 300)).astype(np.float32)
    yy, xx = np.mgrid[:200, :300]
    index, ys, xs = [], [], []
    for i, (cx, cy, r) in enumerate([(40, 50, 6), (150, 120, 10), (250, 30, 3), (100, 170, 8)]):
        inside = (np.abs(xx - cx) + np.abs(yy - cy) <= r) if i % 2 == 0 else (
            (np.abs(xx - cx) <= r) & (np.abs(yy - cy) <= r // 2))
        image[inside] += 1000.0
        index.append(np.full(int(inside.sum()), i))
        ys.append(yy[inside])
        xs.append(xx[inside])
    return image, np.concatenate(index), np.concatenate(ys), np.concatenate(xs)


def test_replace_insert_remove_end_round_trip() -> None:
    image, index, ys, xs = scene(np.random.default_rng(4))
    original = image.copy()
    in_footprint = np.zeros(image.shape, dtype=bool)
    in_footprint[ys, xs] = True
    replacer = NoiseReplacer(image, index, ys, xs)
    assert replacer.n_footprints == 4
    assert np.array_equal(image[~in_footprint], original[~in_footprint])  # outside never touched
    assert np.all(image[in_footprint] < 500)  # sources gone
    noised = image.copy()
    for i in range(4):
        replacer.insert(i)
        mine = index == i
        assert np.array_equal(image[ys[mine], xs[mine]], original[ys[mine], xs[mine]])
        assert np.array_equal(image[ys[~mine], xs[~mine]], noised[ys[~mine], xs[~mine]])
        replacer.remove(i)
        assert np.array_equal(image, noised)
    replacer.end()
    assert np.array_equal(image, original)
    with pytest.raises(IndexError):
        replacer.insert(4)


def test_noise_statistics_and_determinism() -> None:
    rng = np.random.default_rng(8)
    image = rng.normal(SKY_MEAN, SKY_SIGMA, size=(600, 600)).astype(np.float32)
    ys, xs = np.mgrid[100:300, 200:350]
    ys, xs = ys.ravel(), xs.ravel()
    index = (ys >= 200).astype(int)  # two footprints of 15 000 pixels
    image[ys, xs] += 50.0
    first = image.copy()
    replacer = NoiseReplacer(first, index, ys, xs, seed=1)
    noise = first[ys, xs].astype(np.float64)
    assert replacer.mean == pytest.approx(SKY_MEAN, abs=0.1)
    assert replacer.stdev == pytest.approx(SKY_SIGMA * 0.9866, rel=0.02)
    assert noise.mean() == pytest.approx(replacer.mean, abs=4 * replacer.stdev / np.sqrt(noise.size))
    assert noise.std() == pytest.approx(replacer.stdev, rel=0.01)
    second = image.copy()
    NoiseReplacer(second, index, ys, xs, seed=1)
    assert np.array_equal(first, second)
    third = image.copy()
    NoiseReplacer(third, index, ys, xs, seed=2)
    assert not np.array_equal(first, third)


def test_noise_is_drawn_box_by_box_in_footprint_order() -> None:
    image = np.zeros((30, 40), dtype=np.float32)
    image[::2, :] = 1.0  # clipped mean 0.5, stdev ~0.5 (n-1)
    ys = np.array([5, 6, 6, 20])
    xs = np.array([10, 9, 11, 30])
    index = np.array([0, 0, 0, 1])
    replacer = NoiseReplacer(image, index, ys, xs, seed=1)
    normals = ziggurat_normals(7, seed=1)  # box 0: rows 5..6 x cols 9..11; box 1: 1 px
    picked = normals[[1, 3, 5, 6]]  # (y, x) = (5, 10), (6, 9), (6, 11), then box 1
    expected = picked.astype(np.float32) * np.float32(replacer.stdev) + np.float32(replacer.mean)
    assert np.array_equal(image[ys, xs], expected)


def test_draw_order_changes_which_box_gets_which_numbers() -> None:
    image = np.zeros((30, 40), dtype=np.float32)
    image[::2, :] = 1.0
    ys = np.array([5, 6, 20, 21])
    xs = np.array([10, 10, 30, 30])
    index = np.array([0, 0, 1, 1])
    replacer = NoiseReplacer(image, index, ys, xs, draw_order=np.array([1, 0]))
    normals = ziggurat_normals(4, seed=1)[[2, 3, 0, 1]]  # footprint 1 draws first
    expected = normals.astype(np.float32) * np.float32(replacer.stdev) + np.float32(replacer.mean)
    assert np.array_equal(image[ys, xs], expected)
    with pytest.raises(ValueError):
        NoiseReplacer(image.copy(), index, ys, xs, draw_order=np.array([0, 0]))


def test_python27_dict_order() -> None:
    # small ints iterate in sorted order; collisions probe 5*slot + 1 + perturb (CPython 2.7 rules)
    assert python27_dict_order(np.arange(20)[::-1]).tolist() == list(range(19, -1, -1))
    assert python27_dict_order(np.array([5, 13, 21, 3])).tolist() == [3, 2, 0, 1]
    exp_id = ((4192 * 10 + 0) * 10 + 4) * 10000 + 300
    ids = exp_id * 2**26 + np.arange(101, 101 + 740)  # table of 2048 slots: ascending ids
    assert python27_dict_order(ids).tolist() == list(range(740))
    ids = exp_id * 2**26 + np.arange(181, 181 + 340)  # 512 slots: ids >= 512 wrap to the front
    order = python27_dict_order(ids)
    assert order[:9].tolist() == list(range(331, 340)) and order[9:].tolist() == list(range(331))
