"""Astrometric matching with the known WCS (measurement-spec.md §2.1 "Astrometric matching").

No astrometric fit is made (2013: `forceKnownWcs=True`, `calculateSip=False`): each reference object in the
frame takes its closest source within `match_radius_arcsec`, duplicates keep the closer pair, and the matches
go through one 3σ cleaning pass on the x offsets (2013 sip/cleanBadPoints).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from processccd.refcat import ReferenceCatalog
from processccd.sky import unit_vectors
from processccd.table import Column, write_source_table

log = logging.getLogger("processCcd.calibrate.astrometry")

ARCSEC_PER_RAD = 180.0 / np.pi * 3600.0


@dataclass
class AstrometryConfig:
    """Matching of calibration-stage sources to the reference catalogue (2013 defaults)."""

    match_radius_arcsec: float = 1.0  # catalogMatchDist
    clean_sigma: float = 3.0  # cleaningParameter: matches whose x offset is off the trend by >= this many σ go
    clean_order: int = 3  # order of the polynomial fitted to the x offsets against x


@dataclass(frozen=True)
class Matches:
    """Source–reference pairs; arrays aligned, one entry per match, in reference order."""

    source_index: np.ndarray  # int64 index into the source columns
    reference: ReferenceCatalog  # the matched reference objects
    reference_x: np.ndarray  # reference pixel position through the WCS
    reference_y: np.ndarray
    distance_arcsec: np.ndarray

    def __len__(self) -> int:
        return len(self.source_index)

    def clean_stars(self, columns: dict[str, np.ndarray], bad_flags: tuple[str, ...] | list[str]) -> np.ndarray:
        """Per match: the reference is a star and none of the source's `bad_flags` columns is set."""
        good = self.reference.is_star.copy()
        for flag in bad_flags:
            good &= ~np.asarray(columns[flag], dtype=bool)[self.source_index]
        return good

    def subset(self, index: np.ndarray) -> Matches:
        return Matches(self.source_index[index], self.reference.subset(index), self.reference_x[index],
                       self.reference_y[index], self.distance_arcsec[index])


def closest_pairs(ref_ra: np.ndarray, ref_dec: np.ndarray, src_ra: np.ndarray, src_dec: np.ndarray,
                  radius_arcsec: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each reference's closest source within the radius; a source claimed twice stays with the closer reference.

    Sources and references with non-finite positions never match. Returns (reference index, source index, distance ″),
    sorted by reference index.
    """
    from scipy.spatial import cKDTree

    empty = np.zeros(0, dtype=np.int64)
    usable = np.flatnonzero(np.isfinite(src_ra) & np.isfinite(src_dec))
    placed = np.flatnonzero(np.isfinite(ref_ra) & np.isfinite(ref_dec))
    if len(placed) == 0 or len(usable) == 0:
        return empty, empty, np.zeros(0)
    ref_vectors = unit_vectors(ref_ra[placed], ref_dec[placed])
    src_vectors = unit_vectors(src_ra[usable], src_dec[usable])
    # candidate pairs from the k-d trees (chord radius widened by 1e-9 so that rounding loses none); the
    # distance that decides is computed for each candidate exactly as a dense (n_ref, n_src) matrix would be
    reach = 2.0 * np.sin(radius_arcsec / ARCSEC_PER_RAD / 2.0) * (1.0 + 1e-9)
    pairs = cKDTree(ref_vectors).sparse_distance_matrix(cKDTree(src_vectors), reach, output_type="ndarray")
    chord = np.linalg.norm(ref_vectors[pairs["i"]] - src_vectors[pairs["j"]], axis=1)
    distance = 2.0 * np.arcsin(np.clip(chord / 2.0, 0.0, 1.0)) * ARCSEC_PER_RAD
    within = distance <= radius_arcsec
    pair_ref, pair_src, distance = pairs["i"][within], pairs["j"][within], distance[within]
    by_reference = np.lexsort((pair_src, distance, pair_ref))  # closest first; ties: lower source index
    _, nearest = np.unique(pair_ref[by_reference], return_index=True)
    ref_index = placed[pair_ref[by_reference[nearest]]]
    src_index = pair_src[by_reference[nearest]].astype(np.int64)
    dist = distance[by_reference[nearest]]
    order = np.lexsort((ref_index, dist))  # closest first; ties: lower reference index first
    _, first = np.unique(src_index[order], return_index=True)
    keep = np.sort(order[first])
    return ref_index[keep], usable[src_index[keep]], dist[keep]


def clean_offsets(x: np.ndarray, dx: np.ndarray, order: int = 3, nsigma: float = 3.0) -> np.ndarray:
    """Boolean mask of the points that follow the trend of `dx` against `x` (2013 cleanBadPoints, one pass).

    The points, sorted by x, are cut into order+1 consecutive groups (boundaries floor(k·n/(order+1)));
    a polynomial of `order` goes exactly through the groups' (mean x, median dx); points whose residual
    from it is >= nsigma × the residuals' standard deviation are rejected. With n <= order + 1 points, or
    residuals all equal, everything is kept.
    """
    n = len(x)
    keep = np.ones(n, dtype=bool)
    n_groups = order + 1
    if n <= n_groups:
        return keep
    sorted_index = np.argsort(x, kind="stable")
    bounds = (np.arange(n_groups + 1) * n) // n_groups
    group_x = np.array([x[sorted_index[a:b]].mean() for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
    group_dx = np.array([np.median(dx[sorted_index[a:b]]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
    scale = max(float(np.ptp(group_x)), 1.0)  # fit in scaled x: a cubic in raw pixels is badly conditioned
    design = np.vander(group_x / scale, order + 1)
    coefficients = np.linalg.lstsq(design, group_dx, rcond=None)[0]
    residual = dx - np.vander(x / scale, order + 1) @ coefficients
    sigma = float(np.std(residual))
    if sigma == 0.0:
        return keep
    return np.abs(residual) < nsigma * sigma


class AstrometryTask:
    """Matches sources (sky positions from the known WCS) to the reference objects in the frame."""

    def __init__(self, config: AstrometryConfig | None = None) -> None:
        self.config = config or AstrometryConfig()

    def run(self, reference: ReferenceCatalog, reference_x: np.ndarray, reference_y: np.ndarray,
            src_ra: np.ndarray, src_dec: np.ndarray, src_x: np.ndarray) -> Matches:
        """Match; `reference_x/y` are the references' pixel positions, `src_*` the sources' slot centroids."""
        config = self.config
        ref_index, src_index, distance = closest_pairs(reference.ra, reference.dec, src_ra, src_dec,
                                                       config.match_radius_arcsec)
        matches = Matches(src_index, reference.subset(ref_index), reference_x[ref_index],
                          reference_y[ref_index], distance)
        keep = clean_offsets(matches.reference_x, src_x[src_index] - matches.reference_x, config.clean_order,
                             config.clean_sigma)
        if not keep.all():
            log.debug("cleaning removed %d of %d matches", int((~keep).sum()), len(matches))
            matches = matches.subset(keep)
        log.info("Matched %d sources", len(matches))
        return matches


def write_match_table(path: Path, matches: Matches, source_ids: np.ndarray, filter_name: str) -> None:
    """icMatch: one row per match (source id, reference id/position/magnitude, distance), with units; the bytes
    of `astropy.table.Table.write` of these columns (with FILTER in its meta), assembled with numpy."""
    columns = {
        "source.id": np.asarray(source_ids, dtype=np.int64)[matches.source_index],
        "ref.id": np.asarray(matches.reference.ids),
        "ref.ra": np.asarray(matches.reference.ra),
        "ref.dec": np.asarray(matches.reference.dec),
        "ref.mag": np.asarray(matches.reference.mag),
        "ref.mag.err": np.asarray(matches.reference.mag_err),
        "distance": np.asarray(matches.distance_arcsec),
    }
    units = {"ref.ra": "deg", "ref.dec": "deg", "ref.mag": "mag", "ref.mag.err": "mag", "distance": "arcsec"}
    schema = [Column(name, values.dtype.str[1:], units.get(name, ""), "") for name, values in columns.items()]
    write_source_table(path, columns, schema, {"FILTER": filter_name}, column_docs=False)
