"""Quick-look QA: PNG size and content on a synthetic frame, the residual panel's data, apCorr polynomial,
index.html; the residual panel of a demo frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.table import Table

from processccd.dataid import DataId
from processccd.qa import (
    PNG_SHAPE,
    evaluate_standard_polynomial,
    frame_figure,
    match_residuals,
    qa_png_path,
    write_frame_qa,
    write_index,
    zero_point_error,
)

DATA_ID = DataId(run=4192, camcol=4, field=300, filter="r", rerun=40)
ZERO_POINT = 28.0
N_MATCHES = 30


class FakeButler:
    """Only the `path` of the products QA reads."""

    def __init__(self, root: Path) -> None:
        self.output_root = root

    def path(self, dataset: str, data_id: DataId) -> Path:
        return self.output_root / f"{dataset}.{'yaml' if dataset == 'apCorr' else 'fits'}"


def _frame(root: Path, with_match: bool, with_ap_corr: bool) -> tuple[FakeButler, np.ndarray, np.ndarray]:
    """A synthetic processed frame; returns the butler, and the true (m_ref, m_cal - m_ref) of the matches."""
    rng = np.random.default_rng(3)
    height, width = 1361, 2048
    image = rng.normal(0.0, 5.0, (height, width)).astype(np.float32)
    xs, ys = rng.uniform(20, width - 20, 40), rng.uniform(20, height - 20, 40)
    yy, xx = np.mgrid[0:height, 0:width]
    for x, y in zip(xs[:10], ys[:10], strict=True):  # a few bright stars (enough for the zscale test)
        sl = np.s_[int(y) - 8:int(y) + 9, int(x) - 8:int(x) + 9]
        image[sl] += 500.0 * np.exp(-((xx[sl] - x) ** 2 + (yy[sl] - y) ** 2) / 4.0)
    primary = fits.PrimaryHDU()
    primary.header["MAGZERO"] = ZERO_POINT
    fits.HDUList([primary, fits.ImageHDU(image, name="IMAGE"), fits.ImageHDU(np.zeros_like(image, np.int32),
                  name="MASK"), fits.ImageHDU(np.ones_like(image), name="VARIANCE")]).writeto(root / "calexp.fits")
    Table({"centroid.sdss.x": xs, "centroid.sdss.y": ys,
           "aperturecorrection": 1.0 + 1e-5 * xs}).write(root / "src.fits")
    ids = (DATA_ID.exposure_id << 26) + 1 + np.arange(40)
    flux = 10 ** rng.uniform(3, 5, 40)
    Table({"id": ids, "flux.psf": flux, "flux.psf.err": np.sqrt(flux)}).write(root / "icSrc.fits")
    matched = rng.permutation(40)[:N_MATCHES]  # icMatch rows in another order than icSrc's
    residual = rng.normal(0.0, 0.02, N_MATCHES)
    ref_mag = ZERO_POINT - 2.5 * np.log10(flux[matched]) - residual
    if with_match:
        Table({"source.id": ids[matched], "ref.id": np.arange(N_MATCHES),
               "ref.mag": ref_mag}).write(root / "icMatch.fits")
    if with_ap_corr:
        (root / "apCorr.yaml").write_text(yaml.safe_dump({"order": 2, "coefficients": [1.0, 1e-5, -1e-5, 0, 0, 0]}))
    return FakeButler(root), ref_mag, residual


@pytest.mark.parametrize("with_products", [True, False])
def test_png_has_the_expected_size_and_is_not_blank(tmp_path, with_products):
    import matplotlib.image

    butler, _, _ = _frame(tmp_path, with_products, with_products)
    png = qa_png_path(tmp_path, DATA_ID)
    assert png == tmp_path / "qa/qa-004192-r4-0300.png"
    write_frame_qa(butler, DATA_ID, png)
    pixels = matplotlib.image.imread(png)
    assert pixels.shape[:2] == PNG_SHAPE == (500, 1600)
    rgb = pixels[..., :3]
    assert rgb.std() > 0.1  # not blank
    calexp_panel = rgb[60:440, 60:700]
    assert calexp_panel.std() > 0.05 and len(np.unique(calexp_panel.round(2))) > 20  # a zscaled image, not a fill
    assert (np.abs(rgb[..., 0] - rgb[..., 1]) > 0.3).sum() > 100  # red source circles / coloured map
    assert not [p for p in png.parent.iterdir() if p.name.startswith(".")]


def test_residual_panel_plots_every_match_at_its_calibrated_minus_reference_magnitude(tmp_path):
    butler, ref_mag, residual = _frame(tmp_path, True, True)
    panel = frame_figure(butler, DATA_ID).axes[1]
    (points,) = panel.collections
    offsets = np.asarray(points.get_offsets())
    assert len(offsets) == N_MATCHES
    np.testing.assert_allclose(offsets[:, 0], ref_mag)
    np.testing.assert_allclose(offsets[:, 1], residual, atol=1e-12)
    scatter = 1.4826 * np.median(np.abs(residual - np.median(residual)))
    assert f"{N_MATCHES} matches" in panel.texts[0].get_text()
    assert f"scatter (1.4826 MAD) {scatter:.3f} mag" in panel.texts[0].get_text()
    low, high = panel.patches[0].get_path().get_extents(panel.patches[0].get_transform()).transformed(
        panel.transData.inverted()).intervaly
    assert (low, high) == pytest.approx((np.median(residual) - scatter, np.median(residual) + scatter), abs=1e-9)


def test_residual_panel_without_icmatch_says_so(tmp_path):
    butler, _, _ = _frame(tmp_path, False, False)
    panel = frame_figure(butler, DATA_ID).axes[1]
    assert not panel.collections
    assert [t.get_text() for t in panel.texts] == ["no icMatch product for this frame"]


def test_match_residuals_join_on_the_source_id():
    ids = np.array([7, 3, 5, 9])
    flux = np.array([1000.0, 100.0, -5.0, 10.0])
    sources = Table({"id": ids, "flux.psf": flux})
    matches = Table({"source.id": [9, 3, 5, 4], "ref.mag": [25.5, 23.0, 20.0, 18.0]})
    ref, residual = match_residuals(matches, sources, ZERO_POINT)
    # 9 and 3 join; 5 has a negative flux, 4 is not in icSrc
    assert ref.tolist() == [25.5, 23.0]
    np.testing.assert_allclose(residual, [ZERO_POINT - 2.5 - 25.5, ZERO_POINT - 5.0 - 23.0])
    assert match_residuals(matches, Table({"id": ids}), ZERO_POINT) == "no column flux.psf in icSrc"
    assert "none of the 1 matches" in match_residuals(matches[3:], sources, ZERO_POINT)


def test_zero_point_error_from_fluxmag0_and_its_error():
    header = fits.Header()
    assert np.isnan(zero_point_error(header))
    header["FLUXMAG0"] = 10 ** (0.4 * ZERO_POINT)
    header["HIERARCH FLUXMAG0ERR"] = 0.4 * np.log(10.0) * header["FLUXMAG0"] * 0.0125  # as image.py writes it
    assert zero_point_error(header) == pytest.approx(0.0125, rel=1e-12)


def test_standard_polynomial_order():
    x, y = np.array([2.0]), np.array([3.0])
    c = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])  # 1, y, x, y², xy, x²
    assert evaluate_standard_polynomial(c, x, y)[0] == 1 + 2 * 3 + 3 * 2 + 4 * 9 + 5 * 6 + 6 * 4


def test_index_links_every_frame_and_escapes_text(tmp_path):
    index = write_index(tmp_path, ("data id", "status"), [["4192 u4 300", "ok"], ["4192 g4 300", "<failed>"]],
                        ["qa/qa-004192-u4-0300.png", None])
    text = index.read_text()
    assert "href='qa-004192-u4-0300.png'" in text and "&lt;failed&gt;" in text
    assert text.count("<img") == 1


@pytest.mark.slow
def test_residual_panel_of_every_demo_frame_plots_all_its_matches(demo_dir, demo_output):
    from processccd.butler import Butler
    from processccd.table import read_source_table

    butler = Butler(demo_dir / "input", demo_output)
    for run, field in ((4192, 300), (6377, 399)):
        for band in "ugriz":
            data_id = DataId(run=run, camcol=4, field=field, filter=band, rerun=40)
            matches = Table.read(butler.path("icMatch", data_id))
            sources = read_source_table(butler.path("icSrc", data_id))
            panel = frame_figure(butler, data_id).axes[1]
            (points,) = panel.collections
            offsets = np.asarray(points.get_offsets())
            assert len(offsets) == len(matches) > 10, data_id
            # every matched star is an icSrc source; the residuals centre on 0 (the zero point is fitted to them)
            assert np.isin(matches["source.id"], sources["id"]).all()
            residual = offsets[:, 1]
            assert abs(np.median(residual)) < 0.02, data_id
            assert 1.4826 * np.median(np.abs(residual - np.median(residual))) < 0.06, data_id
