"""The fault matrix: the real `process-ccd` on corrupted copies of the demo repository.

Every case runs the CLI as a subprocess on run 4192 field 300, filters u and z, with one input of the z
frame (or a file it shares) broken, and checks the exit status, exactly one error line per failed data
id naming the id and the file, the other data ids processed completely, and no partial or temporary
file in the output. The subprocesses of all cases run once per module, two at a time.
"""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from astropy.io import fits
from astropy.table import Table

import processccd.image
from fault_data import (
    ASTRANS,
    CORRUPT_FILE,
    CORRUPTIONS,
    FIELD_WIDE,
    FPC_Z,
    PSFIELD,
    TRAIL_COLUMNS,
    TRAIL_ROWS,
    Z_INDEX,
    astrans_ending_before,
    bleed_trail,
    constant_fpc,
    edit_fits,
    mirror_input,
    other_camcol,
    refcat_subset,
    stars_in_frame,
)
from processccd.butler import Butler
from processccd.dataid import DataId
from processccd.errors import DataIdError, InputError, OutputError

pytestmark = pytest.mark.slow

U = DataId(run=4192, camcol=4, field=300, filter="u", rerun=40)
Z = DataId(run=4192, camcol=4, field=300, filter="z", rerun=40)
OTHER_RUN_U = DataId(run=6377, camcol=4, field=399, filter="u", rerun=40)
ID_WORDS = ["run=4192", "filter=u^z", "camcol=4", "field=300"]
OTHER_RUN_WORDS = ["run=6377", "filter=u", "camcol=4", "field=399"]
PRODUCTS = ("calexp", "calexpBackground", "psf", "icSrc", "src")


@dataclass
class Case:
    """One run of the CLI and what it must do."""

    args: list[str]  # after INPUT ... (the --id and --output options are added from the fields below)
    exit_code: int
    failed: tuple[DataId, ...] = ()  # ids that must fail, each with one error line naming `names`
    succeeded: tuple[DataId, ...] = ()  # ids that must be processed completely
    names: tuple[str, ...] = ()  # what the error line(s) must contain
    ids: list[list[str]] = field(default_factory=lambda: [ID_WORDS])


@dataclass
class Outcome:
    returncode: int
    stderr: str
    output: Path


def corruption_case(name: str) -> Case:
    corrupt_file = Path(CORRUPT_FILE[name]).name
    if name in FIELD_WIDE:  # the field's tsField serves both filters: both fail, another run's frame does not
        return Case([], InputError.exit_code, failed=(U, Z), succeeded=(OTHER_RUN_U,), names=(corrupt_file,),
                    ids=[ID_WORDS, OTHER_RUN_WORDS])
    return Case([], InputError.exit_code, failed=(Z,), succeeded=(U,), names=(corrupt_file,))


def id_case(words: list[str], bad: str) -> Case:
    return Case([], DataIdError.exit_code, names=(bad,), ids=[words])


CASES: dict[str, Case] = {name: corruption_case(name) for name in CORRUPTIONS}
CASES |= {
    "input repository missing": Case([], InputError.exit_code, names=("no-such-input",)),
    # flat frames (uint16 cannot hold NaN): see test_flat_frame
    "fpC flat 100-DN sky": Case([], 0, succeeded=(U, Z)),
    "fpC constant 1000 DN": Case([], 0, succeeded=(U, Z)),
    "fpC all zeros": Case([], 0, succeeded=(U, Z)),
    # calibration degrades (warning, tsField zero point kept, aperture correction 1) instead of failing
    "reference catalogue missing": Case(["--config", "calibrate.reference_catalog.path=no-such-stars.fits"], 0,
                                        succeeded=(U, Z)),
    "reference catalogue empty": Case([], 0, succeeded=(U, Z)),
    "--id unknown key": id_case(["run=4192", "colour=u"], "colour"),
    "--id non-integer": id_case(["run=4192", "field=three"], "three"),
    "--id filter x": id_case(["run=4192", "filter=x"], "'x'"),
    "--id ../..": id_case(["run=../..", "filter=u"], "../.."),
    "--id 1;rm": id_case(["run=1;rm", "filter=u"], "1;rm"),
    "output not writable": Case([], OutputError.exit_code, names=("a-regular-file",)),
}

# --- unfamiliar frames (issue 13): outcomes documented in README "Processing your own SDSS fields" ------------
Z_CAMCOL2 = DataId(run=4192, camcol=2, field=300, filter="z", rerun=40)
# asTrans without the frame -> the fpC header WCS and one WARNING naming the asTrans file per frame it misses
ASTRANS_FALLBACK: dict[str, tuple[DataId, ...]] = {
    "asTrans field row missing": (Z,),
    "asTrans camcol/filter HDU missing": (Z,),
    "asTrans file missing": (U, Z),
    "asTrans ends before the field": (U, Z),
}
CASES |= {name: Case([], 0, succeeded=(U, Z)) for name in ASTRANS_FALLBACK}
CASES |= {
    "asTrans field row missing, wcs.source=asTrans": Case(
        ["--config", "wcs.source=asTrans"], InputError.exit_code, failed=(Z,), succeeded=(U,),
        names=("asTrans-004192.fit", "field 300 missing")),
    "psField filter HDU empty": Case([], InputError.exit_code, failed=(Z,), succeeded=(U,),
                                     names=("psField-004192-4-0300.fit", "HDU 5 is empty")),
    "reference catalogue of another field": Case([], 0, succeeded=(U, Z)),
    "two reference stars": Case([], 0, succeeded=(U, Z)),
    "camcol 2, gain 7.5": Case(["--config", "wcs.source=fpC"], 0, succeeded=(Z_CAMCOL2,),
                               ids=[["run=4192", "filter=z", "camcol=2", "field=300"]]),
    "bleed trail": Case([], 0, succeeded=(U, Z)),
}


def _empty_psfield_z(repo: Path) -> None:
    def edit(hdul: fits.HDUList) -> None:
        hdul[Z_INDEX + 1] = fits.BinTableHDU(hdul[Z_INDEX + 1].data[:0], header=hdul[Z_INDEX + 1].header)

    edit_fits(repo, PSFIELD, edit)


def _prepare_unfamiliar(name: str, case: Case, repo: Path, root: Path, stars: Path) -> None:
    """The input changes (and --refcat) of the unfamiliar-frame cases."""
    if name == "asTrans file missing":
        (repo / ASTRANS).unlink()
    elif name == "asTrans ends before the field":
        astrans_ending_before(repo, 300)
    elif name == "asTrans field row missing, wcs.source=asTrans":
        CORRUPTIONS["asTrans field row missing"](repo)
    elif name == "psField filter HDU empty":
        _empty_psfield_z(repo)
    elif name == "reference catalogue of another field":  # the demo stars moved 3 degrees north
        case.args += ["--refcat", str(refcat_subset(stars, root / "elsewhere.fits", lambda d: d["dec"] > -90, 3.0))]
    elif name == "two reference stars":  # too few stars for the order-2 aperture correction
        keep = stars_in_frame(FPC_Z, repo, (15.5, 18.0), 2)
        case.args += ["--refcat", str(refcat_subset(stars, root / "two-stars.fits", keep))]
    elif name == "camcol 2, gain 7.5":
        other_camcol(repo, 2, 7.5)
    elif name == "bleed trail":
        bleed_trail(repo)


# 1100 DN = soft bias + a flat, noiseless 100-DN sky: finite variance, nothing to detect
FPC_VALUES = {"fpC flat 100-DN sky": 1100, "fpC constant 1000 DN": 1000, "fpC all zeros": 0}


def _command(input_repo: Path, output: Path, case: Case) -> list[str]:
    args = [sys.executable, "-c", "from processccd.cli.process_ccd import main; main()", str(input_repo),
            "--output", str(output), "-j", "1"]
    for words in case.ids:
        args += ["--id", *words]
    return args + case.args


def _prepare(name: str, case: Case, root: Path, demo_input: Path) -> tuple[list[str], Path]:
    """Build the case's input repository (and output path); return the command and the output path."""
    repo = root / "input"
    output = root / "output"
    if name == "input repository missing":
        repo = root / "no-such-input"
    else:
        mirror_input(demo_input, repo)
    if name in CORRUPTIONS:
        CORRUPTIONS[name](repo)
    if name in FPC_VALUES:
        constant_fpc(repo, FPC_VALUES[name])
    _prepare_unfamiliar(name, case, repo, root, demo_input.parent / "astrometry_net_data" / "stars.fits")

    if name == "reference catalogue empty":
        empty = root / "empty-stars.fits"
        columns = {name: np.zeros(0) for name in ("ra", "dec", "u", "z", "u_err", "z_err")}
        fits.BinTableHDU(Table({"id": np.zeros(0, int), "starnotgal": np.zeros(0, int), **columns})).writeto(empty)
        case.args += ["--config", f"calibrate.reference_catalog.path={empty}"]
    if name == "output not writable":
        (root / "a-regular-file").write_text("not a directory\n")
        output = root / "a-regular-file" / "output"
    return _command(repo, output, case), output


@pytest.fixture(scope="module")
def outcomes(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Every case's CLI run (two subprocesses at a time)."""
    base = tmp_path_factory.mktemp("faults")
    prepared = {name: _prepare(name, case, base / f"case{i:02d}", demo_dir / "input")
                for i, (name, case) in enumerate(CASES.items())}

    def run(name: str) -> Outcome:
        command, output = prepared[name]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        return Outcome(done.returncode, done.stderr, output)

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(CASES, pool.map(run, CASES), strict=True))


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error:" in line]


def assert_complete(output: Path, data_id: DataId) -> None:
    """Every product of `data_id` is there and its src catalogue reads."""
    butler = Butler(output, output)
    for dataset in PRODUCTS:
        assert butler.path(dataset, data_id).is_file(), f"{dataset} of {data_id} missing"
    with fits.open(butler.path("src", data_id)) as hdul:
        assert isinstance(hdul[1], fits.BinTableHDU)
        assert "id" in hdul[1].columns.names


def assert_nothing_written(output: Path, data_id: DataId) -> None:
    butler = Butler(output, output)
    for dataset in PRODUCTS:
        assert not butler.path(dataset, data_id).exists(), f"partial output {dataset} of failed {data_id}"


def assert_no_temporaries(output: Path) -> None:
    if not output.exists():
        return
    leftovers = [p for p in output.rglob("*") if p.name.startswith(".") or p.name.endswith(".tmp")]
    assert not leftovers, f"temporary or hidden files left: {leftovers}"


REFERENCE_WARNING = {  # the astrometry warning of each case (once per frame)
    "reference catalogue missing": r"reference catalogue unusable, no photometric calibration: "
                                   r"\S*/no-such-stars\.fits: cannot read the reference catalogue "
                                   r"\(\[Errno 2\] No such file or directory: .*\)",
    "reference catalogue empty": r"reference catalogue \S*/empty-stars\.fits is empty, no photometric calibration",
}


@pytest.mark.parametrize("name", list(REFERENCE_WARNING))
def test_calibration_without_reference_stars_keeps_the_tsfield_zero_point(name: str,
                                                                          outcomes: dict[str, Outcome]) -> None:
    """Each frame warns, in this order, that the catalogue is unusable and that the aperture correction is 1 and
    the tsField zero point is kept; its calexp holds that zero point."""
    outcome = outcomes[name]
    warning_lines = [line for line in outcome.stderr.splitlines() if " WARNING: " in line]
    kept = r"processCcd\.calibrate WARNING: no source matched the reference catalogue \S+: aperture correction " \
           r"1\.0, tsField zero point (\d+\.\d{6}) kept"
    frame = [rf"processCcd\.calibrate\.astrometry WARNING: {REFERENCE_WARNING[name]}", kept]
    assert len(warning_lines) == 2 * len(frame), outcome.stderr[-3000:]
    for line, pattern in zip(warning_lines, frame * 2, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)
    for data_id, line in zip((U, Z), warning_lines[1::2], strict=True):  # frames run in id order with -j 1
        with fits.open(Butler(outcome.output, outcome.output).path("calexp", data_id)) as hdul:
            assert hdul[0].header["ZPSOURCE"] == "tsField"
            assert hdul[0].header["MAGZERO"] == pytest.approx(float(re.fullmatch(kept, line).group(1)), abs=1e-6)
            if data_id == U:
                assert hdul[0].header["MAGZERO"] == pytest.approx(27.5075, abs=1e-3)  # tsField of 4192 u


@pytest.mark.parametrize("name", [name for name in CASES if name not in FPC_VALUES])
def test_fault_case(name: str, outcomes: dict[str, Outcome]) -> None:
    case, outcome = CASES[name], outcomes[name]
    assert outcome.returncode == case.exit_code, outcome.stderr[-3000:]
    errors = error_lines(outcome.stderr)
    assert "Traceback" not in outcome.stderr
    if case.exit_code == 0:
        assert not errors, errors
    elif case.failed:
        assert len(errors) == len(case.failed), errors
        for data_id in case.failed:
            lines = [line for line in errors if f"run={data_id.run}" in line and f"filter={data_id.filter}" in line]
            assert len(lines) == 1, (data_id, errors)
            assert all(text in lines[0] for text in case.names), lines[0]
            assert_nothing_written(outcome.output, data_id)
    else:
        assert len(errors) == 1, errors
        assert all(text in errors[0] for text in case.names), errors[0]
    for data_id in case.succeeded:
        assert_complete(outcome.output, data_id)
    assert_no_temporaries(outcome.output)


@pytest.mark.parametrize("name", list(FPC_VALUES))
def test_flat_frame(name: str, outcomes: dict[str, Outcome]) -> None:
    """A featureless (noiseless) fpC is processed: nothing is significant, so its src is empty."""
    outcome = outcomes[name]
    assert "Traceback" not in outcome.stderr
    assert outcome.returncode == 0, outcome.stderr[-2000:]
    assert not error_lines(outcome.stderr)
    with fits.open(Butler(outcome.output, outcome.output).path("src", Z)) as hdul:
        assert len(hdul[1].data) == 0
    assert_complete(outcome.output, U)
    assert_no_temporaries(outcome.output)


def test_malformed_id_writes_nothing(outcomes: dict[str, Outcome]) -> None:
    for name in CASES:
        if name.startswith("--id"):
            output = outcomes[name].output
            assert not output.exists() or not any(output.rglob("*.fits")), name


# --- disk full: in process, with writes of the z frame failing with ENOSPC ---------------------------


def _raise_enospc_for_z(original: Callable[..., Any]) -> Callable[..., Any]:
    """`original`, failing with ENOSPC when called on a file of the z frame."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if any("-z4-" in str(arg) for arg in args):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("target", ["write_hdus", "os.replace"])
def test_disk_full(target: str, demo_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> None:
    from processccd.cli.process_ccd import command

    if target == "os.replace":
        monkeypatch.setattr(os, "replace", _raise_enospc_for_z(os.replace))
    else:  # the FITS writer of the calexp, the first product written
        monkeypatch.setattr(processccd.image, "write_hdus", _raise_enospc_for_z(processccd.image.write_hdus))
    output = tmp_path / "output"
    args = [str(demo_dir / "input"), "--output", str(output), "-j", "1", "--id", " ".join(ID_WORDS)]
    with pytest.raises(SystemExit) as exit_:
        command.main(args=args, prog_name="process-ccd", standalone_mode=False)
    assert exit_.value.code == OutputError.exit_code
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and "filter=z" in errors[0] and "-z4-0300" in errors[0], errors
    assert os.strerror(errno.ENOSPC) in errors[0]
    assert_complete(output, U)
    assert_nothing_written(output, Z)
    assert_no_temporaries(output)


@pytest.mark.parametrize("dataset", ["fpC", "fpM", "tsField", "psField", "asTrans"])
def test_every_input_of_a_frame_broken_fails_the_frame_naming_the_file(dataset: str, demo_dir: Path,
                                                                       outcomes: dict[str, Outcome]) -> None:
    """For each of the five SDSS inputs, as the pipeline's own mapper names it for the z frame, at least two
    different breakages fail the z frame with exit 3 and one error line naming that file."""
    path = Butler(demo_dir / "input").path(dataset, Z)
    relpath = path.relative_to(demo_dir / "input").as_posix()
    names = [name for name, broken in CORRUPT_FILE.items() if broken == relpath and name not in ASTRANS_FALLBACK]
    # an asTrans without the frame's HDU or row falls back to the fpC header WCS: one breakage of it is left
    assert len(names) >= (1 if dataset == "asTrans" else 2), (dataset, relpath, sorted(set(CORRUPT_FILE.values())))
    for name in names:
        outcome = outcomes[name]
        assert outcome.returncode == InputError.exit_code, (name, outcome.stderr[-2000:])
        z_errors = [line for line in error_lines(outcome.stderr) if "filter=z" in line]
        assert len(z_errors) == 1 and path.name in z_errors[0], (name, z_errors)


# --- unfamiliar frames (issue 13 item 4) ---------------------------------------------------------------------
def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "WARNING" in line]


def calexp_header(outcome: Outcome, data_id: DataId) -> fits.Header:
    return fits.getheader(Butler(outcome.output, outcome.output).path("calexp", data_id))


@pytest.mark.parametrize("name", list(ASTRANS_FALLBACK))
def test_frame_missing_from_astrans_gets_the_fpc_header_wcs(name: str, outcomes: dict[str, Outcome]) -> None:
    """A field at the start or end of a run (no asTrans row), a missing HDU or file: WCSSRC = 'fpC header', one
    WARNING naming the asTrans file per frame, the calibration as usual (the header WCS is within 0.1")."""
    outcome, fallback = outcomes[name], ASTRANS_FALLBACK[name]
    assert outcome.returncode == 0, outcome.stderr[-2000:]
    warnings = warning_lines(outcome.stderr)
    assert len(warnings) == len(fallback), warnings
    assert all("asTrans-004192.fit" in line and "fpC header" in line for line in warnings), warnings
    for data_id in (U, Z):
        header = calexp_header(outcome, data_id)
        assert header["WCSSRC"] == ("fpC header" if data_id in fallback else "asTrans")
        assert any("asTrans" in str(card) for card in header["HISTORY"]) == (data_id not in fallback)
        assert header["ZPSOURCE"] == "photocal" and header["ZPNSTARS"] >= 8


def test_no_reference_match_keeps_the_tsfield_zero_point_with_one_warning(outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes["reference catalogue of another field"]
    warnings = warning_lines(outcome.stderr)
    assert len(warnings) == 2 and all("no source matched the reference catalogue" in w for w in warnings), warnings
    for data_id, tsfield_zero_point in ((U, 27.5075), (Z, 26.0778)):  # sdss-inputs.md §3
        header = calexp_header(outcome, data_id)
        assert header["ZPSOURCE"] == "tsField"
        assert header["MAGZERO"] == pytest.approx(tsfield_zero_point, abs=1e-4)
        assert (header["APCNSTAR"], header["APCORR"]) == (0, 1.0)


def test_too_few_stars_give_a_constant_aperture_correction(outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes["two reference stars"]
    header = calexp_header(outcome, Z)
    assert header["APCORDER"] == 0 and 1 <= header["APCNSTAR"] <= 2
    assert 0.95 < header["APCORR"] < 1.05
    assert header["ZPSOURCE"] == "photocal" and header["ZPNSTARS"] <= 2
    assert any("constant aperture correction" in line for line in warning_lines(outcome.stderr))
    butler = Butler(outcome.output, outcome.output)
    ap_corr = yaml.safe_load(butler.path("apCorr", Z).read_text())
    assert ap_corr["order"] == 0 and len(ap_corr["coefficients"]) == 1


def test_camcol_and_gain_never_seen(outcomes: dict[str, Outcome]) -> None:
    """Camcol 2 with tsField gain 7.5 (the demo: camcol 4, gains 1.6-4.9): ids, header and variance follow them."""
    outcome = outcomes["camcol 2, gain 7.5"]
    header = calexp_header(outcome, Z_CAMCOL2)
    assert (header["CAMCOL"], header["GAIN"], header["EXPID"]) == (2, 7.5, 4192420300)
    assert header["WCSSRC"] == "fpC header" and header["ZPSOURCE"] == "photocal"
    path = Butler(outcome.output, outcome.output).path("calexp", Z_CAMCOL2)
    variance = fits.getdata(path, "VARIANCE")
    assert float(np.median(variance)) * 7.5 == pytest.approx(95.5, abs=2.0)  # header SKY of 4192 z, DN
    with fits.open(Butler(outcome.output, outcome.output).path("src", Z_CAMCOL2)) as hdul:
        assert len(hdul[1].data) > 200 and np.all(hdul[1].data["id"] >> 26 == 4192420300)


def test_bleed_trail_across_the_detection_region(outcomes: dict[str, Outcome]) -> None:
    """The saturated star and its trail (SAT from the fpM) become one source flagged saturated at its centre,
    kept out of the aperture correction; the zero point stays within 0.06 mag of tsField."""
    outcome = outcomes["bleed trail"]
    butler = Butler(outcome.output, outcome.output)
    (row0, row1), (col0, col1) = TRAIL_ROWS, TRAIL_COLUMNS
    mask = fits.getdata(butler.path("calexp", Z), "MASK")
    assert np.all(mask[row0 : row1 + 1, col0 : col1 + 1] & processccd.image.mask_bit("SAT"))
    with fits.open(butler.path("src", Z)) as hdul:
        src = hdul[1].data
    x, y = src["centroid.sdss.x"], src["centroid.sdss.y"]
    on_trail = (x >= col0) & (x <= col1) & (y >= row0) & (y <= row1)
    assert on_trail.sum() == 1 and src["flags.pixel.saturated.center"][on_trail].all()
    header = calexp_header(outcome, Z)
    assert header["ZPSOURCE"] == "photocal" and abs(header["MAGZERO"] - header["ZPPRIOR"]) < 0.06
    ap_corr_ids = {star["id"] for star in yaml.safe_load(butler.path("apCorr", Z).read_text())["stars"]}
    with fits.open(butler.path("icSrc", Z)) as hdul:
        ic = hdul[1].data
    ic_on_trail = ic["id"][(ic["centroid.sdss.x"] >= col0) & (ic["centroid.sdss.x"] <= col1)
                           & (ic["centroid.sdss.y"] >= row0) & (ic["centroid.sdss.y"] <= row1)]
    assert len(ic_on_trail) == 1
    assert not set(ic_on_trail.tolist()) & ap_corr_ids
