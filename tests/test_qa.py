"""Quick-look QA: PNG size and content on a synthetic frame, residuals, apCorr polynomial, index.html."""

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
    match_residuals,
    qa_png_path,
    write_frame_qa,
    write_index,
)

DATA_ID = DataId(run=4192, camcol=4, field=300, filter="r", rerun=40)
ZERO_POINT = 28.0


class FakeButler:
    """Only the `path` of the products QA reads."""

    def __init__(self, root: Path) -> None:
        self.output_root = root

    def path(self, dataset: str, data_id: DataId) -> Path:
        return self.output_root / f"{dataset}.{'yaml' if dataset == 'apCorr' else 'fits'}"


def _frame(root: Path, with_match: bool, with_ap_corr: bool) -> tuple[FakeButler, np.ndarray, np.ndarray]:
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
    if with_match:
        flux = 10 ** rng.uniform(3, 5, 30)
        ref_mag = ZERO_POINT - 2.5 * np.log10(flux) + rng.normal(0.0, 0.02, 30)
        Table({"ref.mag": ref_mag, "flux.psf": flux, "flux.psf.err": np.sqrt(flux)}).write(root / "icMatch.fits")
    if with_ap_corr:
        (root / "apCorr.yaml").write_text(yaml.safe_dump({"order": 2, "coefficients": [1.0, 1e-5, -1e-5, 0, 0, 0]}))
    return FakeButler(root), xs, ys


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


def test_match_residuals_recover_the_zero_point_scatter():
    rng = np.random.default_rng(1)
    flux = 10 ** rng.uniform(3, 5, 200)
    ref = ZERO_POINT + 0.05 - 2.5 * np.log10(flux)
    mags, residual = match_residuals(Table({"ref_mag": ref, "flux.psf": flux, "flux.psf.err": flux}), ZERO_POINT)
    assert np.allclose(residual, 0.05) and len(mags) == 200
    assert "no reference magnitude" in match_residuals(Table({"flux.psf": flux}), ZERO_POINT)


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
