"""flags.pixel.* on hand-made masks."""

from __future__ import annotations

import numpy as np

from processccd.meas.pixel_flags import DEFAULT_BITS, FLAG_NAMES, pixel_flags, pixel_flags_many

BITS = DEFAULT_BITS


def square_footprint(x0: int, y0: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[y0 : y0 + size, x0 : x0 + size]
    return ys.ravel(), xs.ravel()


def test_bit_values() -> None:
    assert (BITS.bad, BITS.saturated, BITS.interpolated, BITS.cosmic_ray, BITS.edge) == (1, 2, 4, 8, 16)
    assert (BITS.detected, BITS.detected_negative) == (32, 64)


def test_clean_source_has_no_flags() -> None:
    mask = np.zeros((50, 60), dtype=np.uint16)
    mask[:, :] = BITS.detected | BITS.cosmic_ray | BITS.bad  # other planes are ignored
    ys, xs = square_footprint(20, 20, 7)
    assert not any(pixel_flags(mask, ys, xs, 23.2, 22.9).values())


def test_any_versus_center() -> None:
    mask = np.zeros((50, 60), dtype=np.uint16)
    ys, xs = square_footprint(20, 20, 9)  # x, y in 20..28; centre (24, 24)
    mask[28, 28] = BITS.interpolated  # footprint corner: any, not center
    mask[25, 23] = BITS.saturated  # inside the 3x3 box around (24, 24)
    flags = pixel_flags(mask, ys, xs, 24.3, 23.6)
    assert flags == {
        "edge": False,
        "interpolated_any": True,
        "interpolated_center": False,
        "saturated_any": True,
        "saturated_center": True,
    }
    # the centre box moves with round(x), round(y): (24.5, 22.4) -> pixel (25, 22), box rows 21..23
    assert not pixel_flags(mask, ys, xs, 24.5, 22.4)["saturated_center"]


def test_center_can_be_set_without_any() -> None:
    mask = np.zeros((50, 60), dtype=np.uint16)
    mask[30, 31] = BITS.interpolated  # next to the centre, outside the (single-pixel) footprint
    flags = pixel_flags(mask, np.array([30]), np.array([30]), 30.0, 30.0)
    assert flags["interpolated_center"] and not flags["interpolated_any"]


def test_edge_flag() -> None:
    mask = np.zeros((50, 60), dtype=np.uint16)
    ys, xs = square_footprint(2, 2, 5)
    assert not pixel_flags(mask, ys, xs, 4.0, 4.0)["edge"]
    mask[2, 6] = BITS.edge
    assert pixel_flags(mask, ys, xs, 4.0, 4.0)["edge"]
    clean = np.zeros_like(mask)
    assert pixel_flags(clean, ys, xs, -0.6, 4.0)["edge"]  # round(-0.6) = -1: outside
    assert not pixel_flags(clean, ys, xs, -0.5, 4.0)["edge"]  # round(-0.5) = 0: inside
    assert pixel_flags(clean, ys, xs, 10.0, 49.5)["edge"]  # round(49.5) = 50: outside


def test_batch_matches_single() -> None:
    rng = np.random.default_rng(5)
    mask = (rng.random((80, 90)) < 0.02).astype(np.uint16) * BITS.interpolated
    mask |= (rng.random((80, 90)) < 0.02).astype(np.uint16) * BITS.saturated
    mask[:, :3] |= BITS.edge
    footprints = [square_footprint(int(x0), int(y0), int(s)) for x0, y0, s in
                  zip(rng.integers(0, 80, 40), rng.integers(0, 70, 40), rng.integers(1, 8, 40), strict=True)]
    centres_x = np.array([xs.mean() for _, xs in footprints]) + rng.uniform(-1, 1, 40)
    centres_y = np.array([ys.mean() for ys, _ in footprints]) + rng.uniform(-1, 1, 40)
    footprints[7] = (np.array([], dtype=int), np.array([], dtype=int))  # an empty footprint is allowed
    order = rng.permutation(40)  # the pixel lists need not be grouped by source
    source_index = np.concatenate([np.full(len(footprints[i][0]), i) for i in order])
    all_ys = np.concatenate([footprints[i][0] for i in order])
    all_xs = np.concatenate([footprints[i][1] for i in order])
    batch = pixel_flags_many(mask, source_index, all_ys, all_xs, centres_x, centres_y)
    assert set(batch) == set(FLAG_NAMES)
    counts = {name: int(values.sum()) for name, values in batch.items()}
    assert all(0 < count < 40 for count in counts.values()), counts  # the test exercises both outcomes
    for i, (ys, xs) in enumerate(footprints):
        single = pixel_flags(mask, ys, xs, centres_x[i], centres_y[i])
        assert single == {name: bool(values[i]) for name, values in batch.items()}
        X, Y = int(np.floor(centres_x[i] + 0.5)), int(np.floor(centres_y[i] + 0.5))
        box = mask[max(Y - 1, 0) : Y + 2, max(X - 1, 0) : X + 2]
        outside = not (0 <= X < 90 and 0 <= Y < 80)
        assert single == {
            "edge": outside or bool(np.any(mask[ys, xs] & BITS.edge)),
            "interpolated_any": bool(np.any(mask[ys, xs] & BITS.interpolated)),
            "interpolated_center": bool(np.any(box & BITS.interpolated)),
            "saturated_any": bool(np.any(mask[ys, xs] & BITS.saturated)),
            "saturated_center": bool(np.any(box & BITS.saturated)),
        }
