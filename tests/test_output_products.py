"""output.products (what a frame writes) and output.calexp_compression (tile-compressed calexp planes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.wcs import WCS

from processccd.config import ConfigError, load_config
from processccd.dataid import DataId
from processccd.image import Exposure, PhotoCalib, read_calexp
from processccd.tasks.process_ccd import PRODUCTS
from reference_impl.psf import GaussianPsf

CATALOGUES = ("icSrc", "src", "icMatch", "apCorr")
ONE_U = ("--id", "run=4192 filter=u camcol=4 field=300")


def _exposure(sigma: float = 5.0) -> Exposure:
    rng = np.random.default_rng(7)
    height, width = 90, 130
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [351.6, 0.1]
    wcs.wcs.crpix = [65.0, 45.0]
    wcs.wcs.cd = [[-1.1e-4, 0.0], [0.0, 1.1e-4]]
    image = rng.normal(0.0, sigma, (height, width)).astype(np.float32)
    image[40:50, 60:70] += 5000.0  # a bright source
    return Exposure(image=image, mask=rng.integers(0, 2**14, (height, width)).astype(np.uint16),
                    variance=rng.uniform(20.0, 30.0, (height, width)).astype(np.float32), wcs=wcs,
                    psf=GaussianPsf(1.4), photo_calib=PhotoCalib(1.5e11, 3.7e8),
                    data_id=DataId(run=4192, camcol=4, field=300, filter="r", rerun=40))


def test_unknown_product_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="output.products: unknown product.*calexpp"):
        load_config(overrides=["output.products=[src, calexpp]"])
    with pytest.raises(ConfigError, match="calexp_compression"):
        load_config(overrides=["output.calexp_compression=zip"])
    config = load_config(overrides=["output.products=[src, icSrc]"])
    assert config.output.products == ("src", "icSrc")
    assert load_config().output.products == PRODUCTS and load_config().output.calexp_compression == "none"


def test_lossless_calexp_reads_back_exactly(tmp_path: Path) -> None:
    exposure = _exposure()
    exposure.write_fits(tmp_path / "plain.fits")
    exposure.write_fits(tmp_path / "lossless.fits", compression="lossless")
    plain, packed = read_calexp(tmp_path / "plain.fits"), read_calexp(tmp_path / "lossless.fits")
    for name in ("image", "mask", "variance"):
        assert np.array_equal(getattr(packed, name), getattr(plain, name))
    assert packed.mask_planes == plain.mask_planes and packed.header["EXPID"] == plain.header["EXPID"]
    with fits.open(tmp_path / "lossless.fits") as hdus:
        assert [hdu.name for hdu in hdus] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE"]
        assert all(isinstance(hdu, fits.CompImageHDU) for hdu in hdus[1:])
        assert hdus["IMAGE"].header["BUNIT"] == "adu"
        assert WCS(hdus["IMAGE"].header).wcs.ctype[0] == "RA---TAN"


def test_rice_calexp_quantises_image_and_variance_to_the_noise_over_q_and_keeps_the_mask(tmp_path: Path) -> None:
    sigma, q = 5.0, 16.0
    exposure = _exposure(sigma)
    exposure.write_fits(tmp_path / "rice.fits", compression="rice", quantize_level=q)
    exposure.write_fits(tmp_path / "rice2.fits", compression="rice", quantize_level=q)
    assert (tmp_path / "rice.fits").read_bytes() == (tmp_path / "rice2.fits").read_bytes()  # reproducible
    packed = read_calexp(tmp_path / "rice.fits")
    assert np.array_equal(packed.mask, exposure.mask)
    error = np.abs(packed.image - exposure.image)
    assert 0 < error.max() <= sigma / q  # step ~ noise / q, subtractive dithering: error within half a step
    assert np.abs(packed.variance - exposure.variance).max() <= 3.0 / q  # variance plane: its own noise ~2.9


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from processccd.cli.process_ccd import main; main()", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_catalogue_only_run_writes_the_catalogues_and_resumes(demo_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    products = "output.products=[" + ", ".join(CATALOGUES) + "]"
    args = (str(demo_dir / "input"), *ONE_U, "--output", str(output), "-j", "1", "--config", products)
    first = _cli(*args, "--qa")
    assert first.returncode == 0, first.stderr
    assert "no quick-look image (the calexp was not written" in first.stderr
    assert not list(output.rglob("*.png"))
    written = {p.parent.name for p in (output / "sci-results").rglob("*") if p.is_file()}
    assert written == {*CATALOGUES, "processCcd_metadata"}
    metadata = next(output.rglob("processCcd-004192-u4-0300.yaml"))
    assert yaml.safe_load(metadata.read_text())["outputs"] == ["icSrc", "src", "icMatch", "apCorr"]
    second = _cli(*args)
    assert second.returncode == 0 and "skipped" in second.stdout and "Measuring" not in second.stderr
    next(output.rglob("src-004192-u4-0300.fits")).unlink()  # a missing product makes the frame redone
    third = _cli(*args)
    assert third.returncode == 0 and "Measuring" in third.stderr
