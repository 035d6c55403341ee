"""The quad-sphere sky tiles of raw_skyTile: tile numbering, and the tiles of small footprints worked by hand."""

from __future__ import annotations

import numpy as np
import pytest

from processccd.skytile import RESOLUTION, frame_corners, tile_id, tiles_of


@pytest.mark.parametrize("resolution", [3, 4, 5, 6, 7, 180])
def test_tile_ids_number_the_sphere_once(resolution):
    ids = [tile_id(root, x, y, resolution) for root in range(6) for x in range(resolution) for y in range(resolution)]
    assert sorted(ids) == list(range(6 * resolution**2))


def _tiny_frame(ra: float, dec: float) -> np.ndarray:
    """The corners of a 2 x 2 pixel frame of 0.0036" pixels centred on (ra, dec) degrees, unpadded."""
    cd = np.array([[1e-6, 0.0], [0.0, 1e-6]])
    return frame_corners((1.5, 1.5), (ra, dec), cd, 2, 2, pad_rad=0.0)


@pytest.mark.parametrize("ra, dec, expected", [
    # face 1 (centre +x): x = floor(90 (tan(ra) + 1)) = 90, y = floor(90 (tan(dec)/cos(ra) + 1)) = 90;
    # equatorial ids R^2 + 4 R y + (face - 1) R + x = 32400 + 64800 + 90
    (0.1, 0.1, 97290),
    (-0.1, -0.1, 32400 + 4 * 180 * 89 + 89),
    # face 2 (centre +y, x axis -x): ra 90.1 -> x = floor(90 (tan(0.1 deg) + 1)) = 90
    (90.1, 0.1, 32400 + 4 * 180 * 90 + 180 + 90),
    # north pole face 0 (x axis -y, y axis +x): ra 45, dec 89.9 -> (x, y) = (-0.00123, 0.00123) -> tile (89, 90),
    # (dx, dy) = (-0.5, 0.5) from the centre: index 2 of the innermost square, numbered from the top: 6 R^2 - 1 - 2
    (45.0, 89.9, 6 * 180**2 - 3),
    # south pole face 5 (x axis -y, y axis -x): ra 45, dec -89.9 -> tile (89, 89), (dx, dy) = (-0.5, -0.5): index 1
    (45.0, -89.9, 1),
])
def test_a_tiny_frame_lies_in_the_tile_worked_out_by_hand(ra, dec, expected):
    assert tiles_of(_tiny_frame(ra, dec)) == [expected]


def test_a_frame_across_a_face_edge_has_tiles_on_both_faces():
    # a 0.2 deg frame centred on ra 45 deg, the edge between faces 1 and 2: x = R - 1 on face 1, 0 on face 2;
    # dec 0.2-0.4 deg: y = 90 on both (its top edge at tan(dec) = cos(45 deg) / 90, dec 0.45 deg)
    cd = np.array([[0.1 / 1000, 0.0], [0.0, 0.1 / 1000]])
    tiles = tiles_of(frame_corners((1000.5, 1000.5), (45.0, 0.3), cd, 2000, 2000, pad_rad=0.0))
    r = RESOLUTION
    assert tiles == sorted([r * r + 4 * r * 90 + (r - 1), r * r + 4 * r * 90 + r])


def test_the_padding_reaches_the_next_tile():
    # a frame whose edge lies 10" south of the equator's tile boundary (dec 0): padded by 15" it crosses it
    cd = np.array([[0.396 / 3600, 0.0], [0.0, 0.396 / 3600]])
    centre_dec = 10 / 3600 + 100 * 0.396 / 3600  # the frame is 200 pixels high, its top edge at dec 10"
    unpadded = tiles_of(frame_corners((100.5, 100.5), (0.3, -centre_dec), cd, 200, 200, pad_rad=0.0))
    padded = tiles_of(frame_corners((100.5, 100.5), (0.3, -centre_dec), cd, 200, 200))
    assert len(unpadded) == 1 and len(padded) == 2
    assert padded[1] - padded[0] == 4 * RESOLUTION  # the tile north of the first
