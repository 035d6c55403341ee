"""Sky tiles of the 2013 registry's `raw_skyTile`: LSST's quad-sphere pixelization (lsst.skypix, R = 180).

The sphere is split into the 6 faces of a cube (roots 0-5, centred on +z, +x, +y, -x, -y, -z), each face
into R x R tiles that are squares in the face's gnomonic projection (so their edges are great circles).
A frame's tiles are those its footprint overlaps: the great-circle quadrilateral through the corners of
the image, padded outwards by `FRAME_PADDING_RAD` (~15"), in the fpC header's TAN WCS. Great circles are
straight lines in a gnomonic projection, so on each face the footprint is a convex quadrilateral and
the overlap with a tile is a test between a convex polygon and an axis-aligned square (separating axes).

Tile ids are contiguous in [0, 6 R^2): the four equatorial faces row by row from south to north
(R^2 + 4 R y + (root - 1) R + x), the south polar face (root 5) in squares growing from its centre and
the north polar face (root 0) in squares shrinking towards its centre, which numbers the sphere from
south to north.
"""

from __future__ import annotations

import math

import numpy as np
from astropy.wcs import WCS

RESOLUTION = 180  # tiles along each edge of a face (the 2013 QuadSpherePixelization default)
FRAME_PADDING_RAD = 0.000075  # the footprint padding of the 2013 genInputRegistry (about 15 arcsec)
_X, _Y, _Z = np.eye(3)
# per face: centre, x axis, y axis (unit vectors)
FACES = (
    (_Z, -_Y, _X),
    (_X, _Y, _Z),
    (_Y, -_X, _Z),
    (-_X, -_Y, _Z),
    (-_Y, _X, _Z),
    (-_Z, -_Y, -_X),
)


def tile_id(root: int, x: int, y: int, resolution: int = RESOLUTION) -> int:
    """The id of tile (x, y) of face `root`."""
    r = resolution
    if not (0 <= root <= 5 and 0 <= x < r and 0 <= y < r):
        raise ValueError(f"no tile ({root}, {x}, {y}) at resolution {r}")
    if 1 <= root <= 4:
        return r * r + 4 * r * y + (root - 1) * r + x
    dx, dy = x - 0.5 * (r - 1), y - 0.5 * (r - 1)
    ring = max(abs(dx), abs(dy))  # half the side of the square through the tile (0 or 0.5 at the centre)
    inner = 2.0 * ring - 1.0  # side of the square inside it: inner^2 tiles are numbered before this square
    if inner < 0:
        index = 0
    elif dy == -ring:
        index = int(inner * inner + ring - dx)
    elif dx == -ring:
        index = int(inner * inner + 3.0 * ring + dy)
    elif dy == ring:
        index = int(inner * inner + 5.0 * ring + dx)
    else:
        index = int(inner * inner + 7.0 * ring - dy)
    return index if root == 5 else 6 * r * r - 1 - index


def frame_corners(crpix: tuple[float, float], crval: tuple[float, float], cd: np.ndarray, width: int, height: int,
                  pad_rad: float = FRAME_PADDING_RAD) -> np.ndarray:
    """Unit vectors (4, 3) of the padded image corners, in order around the image (0-based pixel centres)."""
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crpix = list(crpix)
    wcs.wcs.crval = list(crval)
    wcs.wcs.cd = cd
    pad_x = math.degrees(pad_rad) / math.hypot(cd[0, 0], cd[0, 1])
    pad_y = math.degrees(pad_rad) / math.hypot(cd[1, 0], cd[1, 1])
    x0, y0, x1, y1 = -0.5 - pad_x, -0.5 - pad_y, width - 0.5 + pad_x, height - 0.5 + pad_y
    ra, dec = np.radians(wcs.wcs_pix2world(np.array([x0, x1, x1, x0]), np.array([y0, y0, y1, y1]), 0))
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=1)


_CENTRES = np.array([face[0] for face in FACES])
_X_AXES = np.array([face[1] for face in FACES])
_Y_AXES = np.array([face[2] for face in FACES])
_SQUARE = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])


def tiles_of(corners: np.ndarray, resolution: int = RESOLUTION) -> list[int]:
    """Ids of the tiles that the great-circle quadrilateral through `corners` (4, 3) overlaps, sorted.

    On each face whose hemisphere holds the corners (a frame-sized footprint on a face lies wholly in its
    hemisphere), the tiles of the footprint's bounding box are kept unless an edge normal of the footprint
    separates them from it (the box already tests the tiles' own axes).
    """
    found: list[int] = []
    step = 2.0 / resolution
    heights = corners @ _CENTRES.T
    for root in np.flatnonzero(np.all(heights > 0, axis=0)):
        plane = np.stack([corners @ _X_AXES[root], corners @ _Y_AXES[root]], axis=1) / heights[:, root, None]
        low, high = plane.min(axis=0), plane.max(axis=0)
        if np.any(high < -1.0) or np.any(low > 1.0):
            continue
        first = np.clip(np.floor((low + 1.0) / step), 0, resolution - 1).astype(int)
        last = np.clip(np.floor((high + 1.0) / step), 0, resolution - 1).astype(int)
        ix, iy = np.meshgrid(np.arange(first[0], last[0] + 1), np.arange(first[1], last[1] + 1), indexing="ij")
        tiles = np.stack([ix.ravel(), iy.ravel()], axis=1)
        squares = (tiles[:, None, :] + _SQUARE[None]) * step - 1.0  # (tiles, 4 corners, 2)
        edges = np.roll(plane, -1, axis=0) - plane
        normals = np.stack([-edges[:, 1], edges[:, 0]], axis=1)
        footprint = plane @ normals.T  # (4 corners, 4 normals)
        projected = squares @ normals.T  # (tiles, 4 corners, 4 normals)
        separated = ((projected.max(axis=1) < footprint.min(axis=0))
                     | (projected.min(axis=1) > footprint.max(axis=0))).any(axis=1)
        found.extend(tile_id(int(root), int(x), int(y), resolution) for x, y in tiles[~separated])
    return sorted(found)
