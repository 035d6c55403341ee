"""process-ccd: options, config record, lock, summary table, resumable runs, interrupts."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from processccd.butler import OutputLock
from processccd.cli.process_ccd import SUMMARY_HEADER, format_table, record_config, summary_rows
from processccd.config import ConfigError, load_config
from processccd.dataid import DataId
from processccd.parallel import FrameSummary

ONE_U = ("--id", "run=4192 filter=u camcol=4 field=300")
DEMO_U_G = ("--id", "run=4192^6377 filter=u^g camcol=4")
# the interruption tests need a run that outlasts their signal: all 10 frames (~0.4-1.2 s each on one core)
DEMO_ALL = ("--id", "run=4192^6377 filter=u^g^r^i^z camcol=4")


def _command(*args: str) -> list[str]:
    return [sys.executable, "-c", "from processccd.cli.process_ccd import main; main()", *args]


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_command(*args), cwd=cwd, capture_output=True, text=True, timeout=600)


def test_help_imports_neither_dask_nor_matplotlib():
    code = ("import sys; from click.testing import CliRunner; from processccd.cli.process_ccd import command;"
            "r = CliRunner().invoke(command, ['--help']); assert r.exit_code == 0, r.output;"
            "assert '--scheduler' in r.output and '--clobber-config' in r.output;"
            "heavy = [m for m in ('distributed', 'dask', 'matplotlib', 'tqdm', 'astropy') if m in sys.modules];"
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_show_config_prints_the_config_in_force(tmp_path):
    result = _cli("--show-config", "--config", "detection.threshold=4.5")
    assert result.returncode == 0, result.stderr
    shown = yaml.safe_load(result.stdout)
    assert shown["detection"]["threshold"] == 4.5 and shown["background_bin_size"] == 512


@pytest.mark.parametrize("override, message", [
    ("detection.thresold=4", "unknown config key detection.thresold"),
    ("detection.threshold=abc", "detection.threshold: expected float, got str 'abc'"),
    ("exposure.variance_model=magic", "is not one of 'lsst2013', 'physical'"),
])
def test_bad_config_is_one_error_line_and_exit_2(tmp_path, override, message):
    result = _cli("input", *ONE_U, "--output", "out", "--config", override, cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("process-ccd: error:") and message in lines[0], result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("words, named", [
    (["run=4192\u2003", "filter=u"], "run='4192\\u2003'"),  # a Unicode space that int() strips
    (["run=\u0664\u0661\u0669\u0662", "filter=u"], "run='\u0664\u0661\u0669\u0662'"),  # int() reads 4192
    (["run=+4192", "filter=u"], "run='+4192'"),
    (["run=-4192", "filter=u"], "run='-4192'"),
    (["run=4_192", "filter=u"], "run='4_192'"),
    (["run=4192", "field=300\x85camcol=4"], "field='300\\x85camcol=4'"),
])
def test_a_non_ascii_or_signed_id_is_one_error_line_and_exit_2(tmp_path, words, named):
    result = _cli("input", "--id", *words, "--output", "out", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [f"process-ccd: error: {named} in data id is not a non-negative integer"], result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, module, extra", [
    (["--scheduler", "tcp://127.0.0.1:8786"], "distributed", "dask"),
    (["--qa"], "matplotlib", "qa"),
])
def test_an_option_without_its_extra_is_one_error_line_and_exit_2(tmp_path, monkeypatch, capsys, option, module,
                                                                  extra):
    from processccd.cli.process_ccd import command

    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError, as if not installed
    with pytest.raises(ImportError):
        __import__(module)
    output = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        command.main(args=[str(tmp_path / "input"), "--id", "run=4192 filter=u", "--output", str(output), "-j", "1",
                           *option], prog_name="process-ccd", standalone_mode=False)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        f"process-ccd: error: {option[0]} needs {module}, which is not installed: pip install 'processccd[{extra}]'"]
    assert not output.exists()


def test_options_with_their_extras_installed_pass_the_check():
    from processccd.cli.process_ccd import OPTION_EXTRAS, check_extras

    check_extras(dict.fromkeys(OPTION_EXTRAS, True))  # the test venv has processccd[all]


def test_missing_output_and_bad_processes_are_usage_errors(tmp_path):
    assert _cli("input", *ONE_U, cwd=tmp_path).returncode == 2
    result = _cli("input", *ONE_U, "--output", "out", "-j", "0", cwd=tmp_path)
    assert result.returncode == 2 and "at least 1" in result.stderr


def test_a_second_run_into_a_locked_output_refuses_with_exit_1(tmp_path):
    input_repo = tmp_path / "input/4192/40/corr/4"
    input_repo.mkdir(parents=True)
    (input_repo / "fpC-004192-u4-0300.fit.gz").write_bytes(b"")
    output = tmp_path / "out"
    output.mkdir()
    with OutputLock(output):
        result = _cli(str(tmp_path / "input"), *ONE_U, "--output", str(output))
        assert (output / ".lock").is_file()
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines == [line for line in lines if "another process-ccd run" in line] and len(lines) == 1, lines
    assert not (output / ".lock").exists()  # released and removed
    with OutputLock(output), pytest.raises(Exception, match="another process-ccd run"):
        OutputLock(output).acquire()


def test_config_record_refuses_a_different_config_with_a_diff(tmp_path):
    record_config(tmp_path, load_config(), clobber_config=False)
    recorded = tmp_path / "config/processCcd.yaml"
    assert yaml.safe_load(recorded.read_text())["detection"]["threshold"] == 5.0
    record_config(tmp_path, load_config(), clobber_config=False)  # same config: fine
    changed = load_config([], ["detection.threshold=6", "measurement.sinc_radius=5"])
    with pytest.raises(ConfigError, match="--clobber-config") as err:
        record_config(tmp_path, changed, clobber_config=False)
    assert err.value.detail == ["detection.threshold: 5.0 -> 6.0", "measurement.sinc_radius: 7.0 -> 5.0"]
    record_config(tmp_path, changed, clobber_config=True)
    assert yaml.safe_load(recorded.read_text())["detection"]["threshold"] == 6.0


def test_summary_table_shows_dashes_for_unknown_values_and_the_failure_type():
    ok = DataId(4192, 4, 300, "u", 40)
    failed = DataId(4192, 4, 300, "g", 40)
    not_run = DataId(4192, 4, 300, "r", 40)
    frames = {ok: FrameSummary(ok, "ok", n_icsrc=20, n_src=79, zero_point=27.5042, seconds=2.345),
              failed: FrameSummary(failed, "failed", error="x: missing", error_type="InputError", exit_code=3)}
    rows = summary_rows([ok, failed, not_run], frames)
    assert rows[0] == ["4192 u4 300", "ok", "79", "20", "-", "27.5042", "-", "2.35"]
    assert rows[1][:2] == ["4192 g4 300", "failed (InputError)"] and rows[2][1] == "not run"
    table = format_table(SUMMARY_HEADER, rows).splitlines()
    assert len(table) == 5 and table[0].startswith("data id") and "zero point" in table[0]


def _products(output: Path) -> set[str]:
    return {p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_rerun_skips_complete_frames_and_clobber_output_redoes_them(demo_dir, tmp_path):
    args = (str(demo_dir / "input"), *ONE_U, "--output", str(tmp_path / "out"), "-j", "1")
    first = _cli(*args)
    assert first.returncode == 0, first.stderr
    metadata = next((tmp_path / "out").rglob("processCcd-004192-u4-0300.yaml"))
    record = yaml.safe_load(metadata.read_text())
    assert record["status"] == "success" and len(record["inputs_md5"]) == 5 and record["result"]["n_src"] > 0
    assert metadata.stat().st_mtime >= max(p.stat().st_mtime for p in (tmp_path / "out/sci-results").rglob("*.fits"))
    second = _cli(*args)
    assert second.returncode == 0 and "skipped" in second.stdout and "Measuring" not in second.stderr
    third = _cli(*args, "--clobber-output")
    assert third.returncode == 0 and "Measuring" in third.stderr
    changed = _cli(*args, "--config", "detection.threshold=6")
    assert changed.returncode == 2 and "detection.threshold: 5.0 -> 6.0" in changed.stderr
    clobbered = _cli(*args, "--config", "detection.threshold=6", "--clobber-config")
    assert clobbered.returncode == 0 and "Measuring" in clobbered.stderr  # new config hash: redone


def _partial_repo(demo_dir: Path, tmp_path: Path) -> Path:
    """A copy (by symlinks) of run 4192 without the g-band fpC."""
    source = demo_dir / "input/4192"
    for path in source.rglob("*"):
        if path.is_file() and "fpC-004192-g4" not in path.name:
            target = tmp_path / "input/4192" / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(path)
    return tmp_path / "input"


@pytest.mark.slow
def test_fail_fast_stops_at_the_first_failure(demo_dir, tmp_path):
    input_repo = _partial_repo(demo_dir, tmp_path)
    result = _cli(str(input_repo), "--id", "run=4192 filter=g^u^r camcol=4 field=300", "--output",
                  str(tmp_path / "out"), "-j", "1", "--fail-fast")
    assert result.returncode == 3
    assert "4192 g4 300  failed (InputError)" in result.stdout and result.stdout.count("not run") == 2
    assert not list((tmp_path / "out").rglob("src-*.fits"))


def _wait_for(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_run_killed_with_sigkill_is_finished_by_the_next_one(demo_dir, tmp_path, processes):
    output = tmp_path / "out"
    args = (str(demo_dir / "input"), *DEMO_ALL, "--output", str(output), "-j", processes)
    run = subprocess.Popen(_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    assert _wait_for(lambda: any(output.rglob("processCcd-*.yaml")), 120), "no frame finished"
    time.sleep(0.3)
    os.killpg(run.pid, signal.SIGKILL)  # as a batch system kills a job: the client and its workers
    run.wait()
    done_before = {p.name for p in output.rglob("processCcd-*.yaml")}
    assert 1 <= len(done_before) < 10

    rerun = _cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.count("skipped") == len(done_before)
    assert len(list(output.rglob("processCcd-*.yaml"))) == 10
    assert not [p for p in output.rglob("*") if p.name.startswith(".")]  # no temporary file, no lock


@pytest.mark.slow
def test_sigint_stops_cleanly_with_exit_130_and_a_rerun_completes(demo_dir, tmp_path):
    output = tmp_path / "out"
    args = (str(demo_dir / "input"), *DEMO_ALL, "--output", str(output), "-j", "1")
    # SIGINT at its default, whatever this process inherited: a shell starts background jobs with SIGINT
    # ignored, and Python then leaves it ignored (the run would not stop)
    run = subprocess.Popen(_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert _wait_for(lambda: any(output.rglob("calexp-*.fits")), 120)
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not [p for p in output.rglob("*") if p.name.startswith(".")]
    rerun = _cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert len(list(output.rglob("processCcd-*.yaml"))) == 10


@pytest.mark.slow
def test_an_interrupt_that_escapes_a_products_guard_leaves_no_temporary_file(demo_dir, tmp_path, monkeypatch):
    """With -j 1 the interrupt is raised in the process that writes; wherever it lands (even between a temporary
    file's creation and its guard), the run ends with no temporary file in the output repository."""
    import tempfile

    from processccd.cli.process_ccd import command
    from processccd.tasks.process_ccd import ProcessCcdTask

    def interrupted_run(self, data_id):
        tempfile.mkstemp(prefix=".calexp-004192-u4-0300.fits.", suffix=".tmp", dir=output)
        raise KeyboardInterrupt

    output = tmp_path / "out"
    monkeypatch.setattr(ProcessCcdTask, "run", interrupted_run)
    with pytest.raises(SystemExit) as exit_:
        command.main(args=[str(demo_dir / "input"), *ONE_U, "--output", str(output), "-j", "1"],
                     prog_name="process-ccd")
    assert exit_.value.code == 130
    assert not [p for p in output.rglob("*") if p.name.startswith(".")]


@pytest.mark.slow
def test_qa_writes_pngs_and_an_index(demo_dir, tmp_path):
    output = tmp_path / "out"
    result = _cli(str(demo_dir / "input"), *ONE_U, "--output", str(output), "-j", "1", "--qa")
    assert result.returncode == 0, result.stderr
    png = output / "qa/qa-004192-u4-0300.png"
    assert png.is_file()
    index = (output / "qa/index.html").read_text()
    assert "qa-004192-u4-0300.png" in index and "4192 u4 300" in index
    shutil.rmtree(output / "qa")
    again = _cli(str(demo_dir / "input"), *ONE_U, "--output", str(output), "-j", "1", "--qa")
    assert again.returncode == 0 and "skipped" in again.stdout and png.is_file()  # QA of a skipped frame


def test_the_console_script_exits_with_the_status_and_flushed_output() -> None:
    """main() leaves through os._exit: the output must be flushed and the status kept."""
    shown = subprocess.run(_command("--help"), capture_output=True, text=True)
    assert shown.returncode == 0 and "Usage: process-ccd" in shown.stdout
    refused = subprocess.run(_command("input", "--id", "filter=x", "--output", "out"), capture_output=True, text=True)
    assert refused.returncode == 2 and refused.stderr.count("process-ccd: error:") == 1
