"""Shared fixtures: the SDSS demo data set, fetched (and verified) into the repository root once."""

from __future__ import annotations

from pathlib import Path

import pytest

from processccd.fetch import default_mirror, fetch_demo_data

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    """A directory holding input/, astrometry_net_data/ and detected-sources.txt.expected."""
    fetch_demo_data(REPO_ROOT, default_mirror(REPO_ROOT))
    return REPO_ROOT

DEMO_IDS = ("run=4192 filter=u^g^r^i^z camcol=4 field=300", "run=6377 filter=u^g^r^i^z camcol=4 field=399")


@pytest.fixture(scope="session")
def demo_output(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The output repository of process-ccd run on the 10 demo frames (once per test session)."""
    from processccd.cli.process_ccd import command

    output = tmp_path_factory.mktemp("demo") / "output"
    args = [str(demo_dir / "input"), "--output", str(output)]
    for expression in DEMO_IDS:
        args += ["--id", expression]
    try:
        command.main(args=args, prog_name="process-ccd", standalone_mode=False)
    except SystemExit as exit_:
        assert exit_.code in (0, None), f"process-ccd failed with exit status {exit_.code}"
    return output


@pytest.fixture(scope="session")
def demo_list(demo_output: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """detected-sources.txt exported from `demo_output`."""
    import contextlib

    from processccd.cli.export_results import command

    path = tmp_path_factory.mktemp("list") / "detected-sources.txt"
    with open(path, "w") as stream, contextlib.redirect_stdout(stream):
        try:
            command.main(args=[str(demo_output)], prog_name="export-results", standalone_mode=False)
        except SystemExit as exit_:
            assert exit_.code in (0, None)
    return path
