"""Matching with the known WCS, 3σ cleaning of the offsets, the catalog star selector."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table
from astropy.wcs import WCS

from processccd.refcat import ReferenceCatalog
from processccd.table import EXTRA_SCHEMA, SOURCE_SCHEMA, empty_columns
from processccd.tasks.astrometry import AstrometryTask, Matches, clean_offsets, closest_pairs, write_match_table
from processccd.tasks.star_selector import StarSelectorTask
from reference_impl.astrometry import dense_closest_pairs

ARCSEC = 1.0 / 3600.0
PIXEL_SCALE = 0.396  # arcsec


def _wcs() -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [351.6, 0.1]
    wcs.wcs.crpix = [1024.5, 681.0]
    wcs.wcs.cdelt = [-PIXEL_SCALE * ARCSEC, PIXEL_SCALE * ARCSEC]
    return wcs


def _catalog(ra: np.ndarray, dec: np.ndarray, mag: np.ndarray | None = None) -> ReferenceCatalog:
    n = len(ra)
    mag = np.full(n, 18.0) if mag is None else mag
    return ReferenceCatalog(np.arange(100, 100 + n), ra, dec, mag, np.full(n, 0.02), np.ones(n, dtype=bool))


def test_closest_pairs_takes_the_closest_source_and_resolves_duplicates() -> None:
    ref_ra = np.array([10.0, 10.0 + 0.3 * ARCSEC, 20.0, 30.0])
    ref_dec = np.zeros(4)
    # source 0 sits 0.1" from ref 0 and 0.2" from ref 1; source 1 is 0.5" from ref 0; source 2 is 0.9" from ref 2
    src_ra = np.array([10.0 + 0.1 * ARCSEC, 10.0 - 0.5 * ARCSEC, 20.0 + 0.9 * ARCSEC, np.nan, 30.0 + 1.5 * ARCSEC])
    src_dec = np.array([0.0, 0.0, 0.0, 0.0, 0.0])
    ref, src, dist = closest_pairs(ref_ra, ref_dec, src_ra, src_dec, 1.0)
    # ref 1's closest source is source 0, already claimed at a smaller distance by ref 0: ref 1 goes unmatched,
    # it does not fall back to another source; ref 3's source is 1.5" away
    np.testing.assert_array_equal(ref, [0, 2])
    np.testing.assert_array_equal(src, [0, 2])
    np.testing.assert_allclose(dist, [0.1, 0.9], rtol=1e-6)


def test_clean_offsets_rejects_injected_outliers() -> None:
    rng = np.random.default_rng(4)
    x = rng.uniform(0, 2048, 60)
    dx = 0.05 + 1e-4 * x + rng.normal(0, 0.02, 60)
    outliers = np.array([3, 17, 42])
    dx[outliers] += np.array([0.5, -0.6, 0.8])
    keep = clean_offsets(x, dx)
    assert not keep[outliers].any()
    assert keep.sum() >= 55


def test_clean_offsets_keeps_everything_when_too_few_points() -> None:
    assert clean_offsets(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 5.0, 0.0, 0.0])).all()


def test_task_matches_through_the_wcs_and_cleans() -> None:
    wcs = _wcs()
    rng = np.random.default_rng(5)
    x_true, y_true = rng.uniform(30, 2000, 40), rng.uniform(30, 1330, 40)
    ra, dec = wcs.all_pix2world(x_true, y_true, 0)
    catalog = _catalog(ra, dec)
    src_x = x_true + rng.normal(0, 0.05, 40)
    src_y = y_true + rng.normal(0, 0.05, 40)
    src_x[7] += 1.5  # 0.6" off: matched within 1", but an outlier of the x offsets
    src_x, src_y = np.append(src_x, 500.0), np.append(src_y, 500.0)  # a source without a reference
    src_ra, src_dec = wcs.all_pix2world(src_x, src_y, 0)
    matches = AstrometryTask().run(catalog, x_true, y_true, src_ra, src_dec, src_x)
    assert len(matches) == 39
    assert 7 not in matches.source_index and 40 not in matches.source_index
    np.testing.assert_array_equal(matches.reference.ids, 100 + matches.source_index)
    assert np.all(matches.distance_arcsec < 0.2)


def test_reference_selection_in_the_grown_frame() -> None:
    wcs = _wcs()
    x = np.array([-60.0, -40.0, 1000.0, 2087.0, 2100.0, 500.0])
    y = np.array([500.0, 500.0, 600.0, 700.0, 700.0, 1400.0])
    ra, dec = wcs.all_pix2world(x, y, 0)
    inside, ref_x, _ = _catalog(ra, dec).in_frame(wcs, 2048, 1361, 50.0)
    np.testing.assert_array_equal(inside.ids, [101, 102, 103, 105])
    np.testing.assert_allclose(ref_x, [-40.0, 1000.0, 2087.0, 500.0], atol=1e-6)


def test_star_selector_rules() -> None:
    wcs = _wcs()
    n = 6
    x = np.array([100.0, 200.0, 300.0, 5.0, 500.0, 600.0])
    y = np.full(n, 300.0)
    ra, dec = wcs.all_pix2world(x, y, 0)
    catalog = _catalog(ra, dec)
    is_star = np.ones(n, dtype=bool)
    is_star[5] = False
    catalog = ReferenceCatalog(catalog.ids, catalog.ra, catalog.dec, catalog.mag, catalog.mag_err, is_star)
    columns = empty_columns(n, SOURCE_SCHEMA + EXTRA_SCHEMA)
    columns["coord.ra"], columns["coord.dec"] = ra, dec
    columns["centroid.sdss.x"], columns["centroid.sdss.y"] = x, y
    columns["flux.psf"][:] = [100.0, 100.0, -1.0, 100.0, 100.0, 100.0]
    columns["flags.pixel.interpolated.center"][1] = True  # bad flag
    image = np.zeros((1361, 2048), dtype=np.float32)
    image[300, 500] = np.nan  # source 4's stamp has no finite maximum
    matches = AstrometryTask().run(catalog, x, y, ra, dec, x)
    assert len(matches) == n
    selection = StarSelectorTask().run(image, columns, matches)
    # 1: interpolated centre, 2: negative flux, 3: stamp leaves the image, 4: NaN stamp, 5: not a star
    np.testing.assert_array_equal(selection.source_index, [0])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_closest_pairs_equal_the_dense_matcher_bit_for_bit(seed: int) -> None:
    """Crowded fields (many references with several sources within the radius, duplicated and NaN positions):
    the k-d tree matcher returns the dense matrix's pairs and distances exactly."""
    rng = np.random.default_rng(seed)
    ref_ra = 10.0 + rng.uniform(0, 60, 300) * ARCSEC
    ref_dec = 0.5 + rng.uniform(0, 60, 300) * ARCSEC
    src_ra = np.concatenate([ref_ra[:200] + rng.normal(0, 0.4, 200) * ARCSEC, 10.0 + rng.uniform(0, 60, 400) * ARCSEC])
    src_dec = np.concatenate([ref_dec[:200] + rng.normal(0, 0.4, 200) * ARCSEC,
                              0.5 + rng.uniform(0, 60, 400) * ARCSEC])
    src_ra[[5, 6]], src_dec[[5, 6]] = src_ra[4], src_dec[4]  # equal distances: the lower source index wins
    src_ra[::37] = np.nan
    ref_dec[::53] = np.nan
    for radius in (0.5, 1.0, 3.0):
        fast = closest_pairs(ref_ra, ref_dec, src_ra, src_dec, radius)
        dense = dense_closest_pairs(ref_ra, ref_dec, src_ra, src_dec, radius)
        assert len(fast[0]) > 50
        for got, want in zip(fast, dense, strict=True):
            np.testing.assert_array_equal(got, want)
            assert got.dtype == want.dtype


@pytest.mark.parametrize("n", [0, 1, 40])
def test_match_table_is_byte_identical_to_astropy_table_write(tmp_path, n: int) -> None:
    """icMatch, written with numpy, has the bytes astropy.table writes for the same columns, units and meta."""
    rng = np.random.default_rng(n)
    reference = ReferenceCatalog(rng.integers(0, 2**40, n), rng.uniform(0, 360, n), rng.uniform(-5, 5, n),
                                 rng.uniform(14, 22, n), rng.uniform(0.01, 0.1, n), rng.random(n) < 0.5)
    matches = Matches(rng.permutation(n).astype(np.int64), reference, rng.uniform(0, 2048, n),
                      rng.uniform(0, 1361, n), rng.uniform(0, 1, n))
    source_ids = rng.integers(0, 2**50, n).astype(np.int64)
    write_match_table(tmp_path / "ours.fits", matches, source_ids, "r")
    table = Table()
    table["source.id"] = source_ids[matches.source_index]
    table["ref.id"] = reference.ids
    for name, values, unit in (("ref.ra", reference.ra, "deg"), ("ref.dec", reference.dec, "deg"),
                               ("ref.mag", reference.mag, "mag"), ("ref.mag.err", reference.mag_err, "mag"),
                               ("distance", matches.distance_arcsec, "arcsec")):
        table[name] = values
        table[name].unit = unit
    table.meta["FILTER"] = "r"
    table.write(tmp_path / "astropy.fits", format="fits")
    assert (tmp_path / "ours.fits").read_bytes() == (tmp_path / "astropy.fits").read_bytes()
