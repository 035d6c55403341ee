"""The demo without asTrans (issue 13 item 1): every frame takes the fpC header WCS, with the same src rows
as with asTrans and coordinates within 0.15"."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits

from conftest import DEMO_IDS
from fault_data import mirror_input
from processccd.butler import Butler
from processccd.dataid import DataId

pytestmark = pytest.mark.slow

FRAMES = [DataId(run, 4, field, band, 40) for run, field in ((4192, 300), (6377, 399)) for band in "ugriz"]


@pytest.fixture(scope="module")
def without_astrans(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(output, stderr) of process-ccd on a copy of the demo input without its astrom/ directories."""
    root = tmp_path_factory.mktemp("no-astrans")
    repo = mirror_input(demo_dir / "input", root / "input")
    for astrom in repo.glob("*/*/astrom"):
        shutil.rmtree(astrom)
    command = [sys.executable, "-c", "from processccd.cli.process_ccd import main; main()", str(repo), "--output",
               str(root / "output"), "-j", "1"]
    for expression in DEMO_IDS:
        command += ["--id", expression]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "output", done.stderr


def test_one_warning_per_frame_naming_the_missing_file(without_astrans: tuple[Path, str]) -> None:
    warnings = [line for line in without_astrans[1].splitlines() if "WARNING" in line]
    assert len(warnings) == len(FRAMES), warnings
    for data_id in FRAMES:
        name = f"asTrans-{data_id.run:06d}.fit: asTrans file not found"
        assert sum(name in line and f"fpC-{data_id.run:06d}-{data_id.filter}4-" in line for line in warnings) == 1


@pytest.mark.parametrize("data_id", FRAMES, ids=str)
def test_same_sources_and_coordinates_within_0_15_arcsec(data_id: DataId, demo_output: Path,
                                                         without_astrans: tuple[Path, str]) -> None:
    output = without_astrans[0]
    tables, headers = [], []
    for root in (demo_output, output):
        butler = Butler(root, root)
        with fits.open(butler.path("src", data_id)) as hdul:
            tables.append(hdul[1].data)
        headers.append(fits.getheader(butler.path("calexp", data_id)))
    with_astrans, without = tables
    assert (headers[0]["WCSSRC"], headers[1]["WCSSRC"]) == ("asTrans", "fpC header")
    np.testing.assert_array_equal(with_astrans["id"], without["id"])
    np.testing.assert_array_equal(with_astrans["centroid.sdss.x"], without["centroid.sdss.x"])
    separation = SkyCoord(with_astrans["coord.ra"], with_astrans["coord.dec"], unit="deg").separation(
        SkyCoord(without["coord.ra"], without["coord.dec"], unit="deg")).arcsec
    assert np.median(separation) < 0.15 and separation.max() < 0.15
    assert headers[1]["MAGZERO"] == pytest.approx(headers[0]["MAGZERO"], abs=1e-3)
    assert headers[1]["ZPSOURCE"] == "photocal"
