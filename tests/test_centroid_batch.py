"""gaussian_centroid_stamps equals the scalar gaussian_centroid source by source (x0, y0 to 1e-9 px, flags equal)."""

from __future__ import annotations

import math

import numpy as np

from processccd.meas.centroid import (
    GAUSSIAN_STAMP_HALF,
    LOST_DISTANCE,
    gaussian_centroid,
    gaussian_centroid_many,
    gaussian_centroid_stamps,
)

TOLERANCE = 1e-9
SHAPE = (300, 420)
OFF_IMAGE = 1e30  # stamp pixels off the image: a result that read one would be far off


def star_field(seed: int, n_stars: int, shape: tuple[int, int] = SHAPE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian stars of widths 0.7–5 px and peaks 2–30000 on sky 100 ± 5; start positions off by ~0.5 px."""
    rng = np.random.default_rng(seed)
    height, width = shape
    image = rng.normal(100.0, 5.0, size=shape)
    x_true = rng.uniform(-2.0, width + 1.0, n_stars)
    y_true = rng.uniform(-2.0, height + 1.0, n_stars)
    peaks = 10.0 ** rng.uniform(0.3, 4.5, n_stars)
    sigmas = rng.uniform(0.7, 5.0, n_stars)
    yy, xx = np.mgrid[:height, :width]
    for x, y, peak, sigma in zip(x_true, y_true, peaks, sigmas, strict=True):
        region = (slice(max(int(y) - 25, 0), max(int(y) + 26, 0)), slice(max(int(x) - 25, 0), max(int(x) + 26, 0)))
        r2 = (xx[region] - x) ** 2 + (yy[region] - y) ** 2
        image[region] += peak * np.exp(-0.5 * r2 / sigma**2)
    return image, x_true + rng.normal(0.0, 0.5, n_stars), y_true + rng.normal(0.0, 0.5, n_stars)


def centred_stamps(
    image: np.ndarray, x: np.ndarray, y: np.ndarray, half: int = GAUSSIAN_STAMP_HALF, shift: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stamps of side 2·half+1 with origin round(v) − half + shift; pixels off the image are OFF_IMAGE."""
    height, width = image.shape
    origin_x = np.floor(x + 0.5).astype(np.int64) - half + shift
    origin_y = np.floor(y + 0.5).astype(np.int64) - half + shift
    offsets = np.arange(2 * half + 1)
    rows, cols = origin_y[:, None] + offsets, origin_x[:, None] + offsets
    stamps = image[np.clip(rows, 0, height - 1)[:, :, None], np.clip(cols, 0, width - 1)[:, None, :]]
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]
    return np.where(inside, stamps, OFF_IMAGE), origin_x, origin_y


def assert_equals_scalar(
    images: list[np.ndarray], x: np.ndarray, y: np.ndarray, result: tuple[np.ndarray, ...], skip: set[int]
) -> list[tuple[float, float, bool]]:
    """Every source not in `skip` has the scalar result on its image; returns the scalar results."""
    x0, y0, flag = result[:3]
    scalar = []
    for index in range(len(x)):
        if index in skip:
            continue
        sx, sy, sflag = gaussian_centroid(images[index], float(x[index]), float(y[index]))
        scalar.append((sx, sy, sflag))
        assert flag[index] == sflag, index
        if math.isnan(sx):
            assert math.isnan(x0[index]) and math.isnan(y0[index]), index
        else:
            assert abs(x0[index] - sx) <= TOLERANCE and abs(y0[index] - sy) <= TOLERANCE, index
    return scalar


def test_batch_equals_scalar_on_a_star_field() -> None:
    image, x, y = star_field(1, 300)
    stamps, origin_x, origin_y = centred_stamps(image, x, y)
    result = gaussian_centroid_stamps(stamps, origin_x, origin_y, x, y, image.shape)
    fallback = set(result[3].tolist())
    assert len(fallback) < 0.1 * len(x)
    scalar = assert_equals_scalar([image] * len(x), x, y, result, fallback)
    kept = [i for i in range(len(x)) if i not in fallback]
    # the field covers the cases that matter: failed fits, fits that ran away, sources near the edges
    assert sum(flag for _, _, flag in scalar) >= 5
    moved = [math.hypot(sx - x[i], sy - y[i]) for i, (sx, sy, flag) in zip(kept, scalar, strict=True) if not flag]
    assert sum(d > LOST_DISTANCE for d in moved) >= 10
    near_edge = [i for i in kept if min(x[i], y[i], SHAPE[1] - x[i], SHAPE[0] - y[i]) < 16 and not result[2][i]]
    assert len(near_edge) >= 10


def test_non_positive_peak_and_too_close_to_the_edge_give_nan() -> None:
    image = np.full((60, 70), 10.0)
    x = np.array([30.0, 1.2, 35.0, 68.0])
    y = np.array([30.0, 30.0, 58.6, 20.0])
    stamps, origin_x, origin_y = centred_stamps(image, x, y)
    x0, y0, flag, fallback = gaussian_centroid_stamps(stamps, origin_x, origin_y, x, y, image.shape)
    assert fallback.size == 0
    assert flag.all() and np.isnan(x0).all() and np.isnan(y0).all()
    assert all(gaussian_centroid(image, xi, yi)[2] for xi, yi in zip(x, y, strict=True))


def test_each_source_from_its_own_image() -> None:
    first, x, y = star_field(2, 60)
    second, _, _ = star_field(3, 60)
    images = [first if i % 2 else second for i in range(len(x))]
    stamps = []
    origins = []
    for index, image in enumerate(images):
        stamp, origin_x, origin_y = centred_stamps(image, x[index : index + 1], y[index : index + 1])
        stamps.append(stamp[0])
        origins.append((origin_x[0], origin_y[0]))
    origin_x, origin_y = np.array(origins).T
    result = gaussian_centroid_stamps(np.array(stamps), origin_x, origin_y, x, y, SHAPE)
    assert_equals_scalar(images, x, y, result, set(result[3].tolist()))


def test_sources_whose_pixels_leave_the_stamp_fall_back() -> None:
    image, x, y = star_field(4, 150)
    for half, shift in ((17, 0), (16, 1), (24, 8), (30, -6)):
        stamps, origin_x, origin_y = centred_stamps(image, x, y, half, shift)
        result = gaussian_centroid_stamps(stamps, origin_x, origin_y, x, y, image.shape)
        fallback = set(result[3].tolist())
        assert np.isnan(result[0][result[3]]).all() and result[2][result[3]].all()
        assert_equals_scalar([image] * len(x), x, y, result, fallback)
    # a box that starts right of the stamp origin by too little room always falls back
    stamps, origin_x, origin_y = centred_stamps(image, x, y, 16, 1)
    interior = (x > 20) & (x < SHAPE[1] - 20) & (y > 20) & (y < SHAPE[0] - 20)
    fallback = gaussian_centroid_stamps(stamps, origin_x, origin_y, x, y, image.shape)[3]
    assert set(np.flatnonzero(interior)) <= set(fallback.tolist())


def test_gaussian_centroid_many_equals_scalar_everywhere() -> None:
    image, x, y = star_field(5, 200)
    x = np.r_[x, np.nan]
    y = np.r_[y, 10.0]
    x0, y0, flag = gaussian_centroid_many(image, x[:-1], y[:-1])
    assert_equals_scalar([image] * (len(x) - 1), x[:-1], y[:-1], (x0, y0, flag), set())
    stamps, origin_x, origin_y = centred_stamps(image, np.nan_to_num(x), y)
    assert gaussian_centroid_stamps(stamps, origin_x, origin_y, x, y, image.shape)[3][-1] == len(x) - 1
