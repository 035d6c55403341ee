"""The dense astrometric matcher: every reference against every source, an (n_ref, n_src) distance matrix.
The reference of `processccd.tasks.astrometry.closest_pairs`, which finds the candidates with k-d trees."""

from __future__ import annotations

import numpy as np

from processccd.sky import unit_vectors
from processccd.tasks.astrometry import ARCSEC_PER_RAD


def dense_closest_pairs(ref_ra: np.ndarray, ref_dec: np.ndarray, src_ra: np.ndarray, src_dec: np.ndarray,
                  radius_arcsec: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each reference's closest source within the radius; a source claimed twice stays with the closer reference.

    Sources with non-finite positions never match. Returns (reference index, source index, distance ″),
    sorted by reference index.
    """
    empty = np.zeros(0, dtype=np.int64)
    usable = np.flatnonzero(np.isfinite(src_ra) & np.isfinite(src_dec))
    if len(ref_ra) == 0 or len(usable) == 0:
        return empty, empty, np.zeros(0)
    chord = np.linalg.norm(unit_vectors(ref_ra, ref_dec)[:, None, :]
                           - unit_vectors(src_ra[usable], src_dec[usable])[None, :, :], axis=2)
    distance = 2.0 * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0)) * ARCSEC_PER_RAD  # (n_ref, n_src)
    nearest = np.argmin(distance, axis=1)
    nearest_distance = distance[np.arange(len(ref_ra)), nearest]
    ref_index = np.flatnonzero(nearest_distance <= radius_arcsec)
    src_index = nearest[ref_index]
    dist = nearest_distance[ref_index]
    order = np.lexsort((ref_index, dist))  # closest first; ties: lower reference index first
    _, first = np.unique(src_index[order], return_index=True)
    keep = np.sort(order[first])
    return ref_index[keep], usable[src_index[keep]], dist[keep]

