"""End-to-end: process-ccd on the demo frames (slow), and its handling of bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from processccd.image import MASK_PLANES, read_calexp
from processccd.table import read_source_table

FRAMES = [(run, field, f) for run, field in ((4192, 300), (6377, 399)) for f in "ugriz"]


def frame_dir(output: Path, run: int, f: str) -> Path:
    return output / "sci-results" / str(run) / "4" / f


@pytest.mark.slow
@pytest.mark.parametrize("run, field, f", FRAMES)
def test_calexp_is_complete_and_its_wcs_matches_the_reference_stars(demo_output, demo_dir, run, field, f):
    name = f"{run:06d}-{f}4-{field:04d}"
    calexp = read_calexp(frame_dir(demo_output, run, f) / "calexp" / f"calexp-{name}.fits")
    assert calexp.image.shape == calexp.mask.shape == calexp.variance.shape == (1361, 2048)
    assert calexp.mask_planes["INTRP"] == MASK_PLANES["INTRP"]
    assert calexp.header["FLUXMAG0"] > 0
    with fits.open(frame_dir(demo_output, run, f) / "calexp" / f"calexp-{name}.fits") as hdul:
        wcs = WCS(hdul["IMAGE"].header)  # read back by astropy alone
    assert wcs.wcs.ctype[0] == "RA---TAN-SIP"

    src = read_source_table(frame_dir(demo_output, run, f) / "src" / f"src-{name}.fits")
    good = (~src["flags.badcentroid"] & ~src["flags.pixel.saturated.any"]
            & (src["flux.psf"] / src["flux.psf.err"] > 20))
    sky = wcs.pixel_to_world(src["centroid.sdss.x"][good], src["centroid.sdss.y"][good])
    stars = Table.read(demo_dir / "astrometry_net_data" / "stars.fits")
    ref = SkyCoord(np.mod(stars["ra"], 360.0), stars["dec"], unit="deg")
    index, separation, _ = sky.match_to_catalog_sky(ref)
    matched = separation.arcsec < 1.5
    assert matched.sum() >= 8
    assert np.median(separation.arcsec[matched]) <= 0.12


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-c", "from processccd.cli.process_ccd import main; main()", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, env={**os.environ}, timeout=600)


def test_malformed_id_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "input").mkdir()
    for bad in ("run=4192 filter=x", "run=../..", "colour=u", "field=1;rm"):
        result = _cli("input", "--id", *bad.split(), "--output", "out", cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("process-ccd: error:"), result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_missing_fpc_for_one_filter_others_still_processed(demo_dir, tmp_path):
    src_run = demo_dir / "input" / "4192"
    run_copy = tmp_path / "input" / "4192"
    for path in src_run.rglob("*"):
        if path.is_file():
            target = run_copy / path.relative_to(src_run)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
    (run_copy / "40/corr/4/fpC-004192-g4-0300.fit.gz").unlink()
    result = _cli("input", "--id", "run=4192", "filter=u^g", "camcol=4", "field=300", "--output", "out",
                  cwd=tmp_path)
    assert result.returncode == 3, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "fpC-004192-g4-0300.fit.gz" in errors[0], result.stderr
    out = tmp_path / "out/sci-results/4192/4"
    assert (out / "u/src/src-004192-u4-0300.fits").is_file()
    assert not (out / "g").exists()
    assert not [p for p in (tmp_path / "out").rglob("*") if p.name.startswith(".")]


def test_total_background_equals_the_float64_sum_rounded_once() -> None:
    from processccd.tasks.process_ccd import total_background

    rng = np.random.default_rng(0)
    parts = tuple(rng.normal(100.0, 30.0, (203, 157)).astype(np.float32) for _ in range(3))
    expected = (parts[0].astype(np.float64) + parts[1] + parts[2]).astype(np.float32)
    for rows_per_block in (1, 64, 1000):
        total = total_background(parts, rows_per_block)
        assert total.dtype == np.float32
        np.testing.assert_array_equal(total, expected)
