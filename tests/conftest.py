"""Shared fixtures: the SDSS demo data set, fetched (and verified) into the repository root once; the
Hypothesis profiles.

Hypothesis profiles (property tests of the id parser, the fpM span decoder, ...):
  ci    derandomized: the examples are a fixed function of each test, so a run fails or passes the same way
        every time. The default of every run: plain `pytest` and `bin/run-tests.sh`; always under CI (the `CI`
        environment variable set, as CI services do), whatever HYPOTHESIS_PROFILE says.
  fuzz  random examples (a new seed each run), 20x as many, saved in .hypothesis/ so that a failure found
        once is replayed first next time. For local fuzzing only: `HYPOTHESIS_PROFILE=fuzz pytest tests/...`
        or `pytest --hypothesis-profile=fuzz tests/...` (an explicit option, which wins over both variables).
The byte-mutation fuzz of the readers (`pytest -m fuzz`) does not use Hypothesis: its seed is fixed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import settings

from processccd.fetch import default_mirror, fetch_demo_data

REPO_ROOT = Path(__file__).resolve().parents[1]
HYPOTHESIS_PROFILES = ("ci", "fuzz")
settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("fuzz", derandomize=False, max_examples=20 * settings.default.max_examples,
                          deadline=None, print_blob=True)


def hypothesis_profile(environ: Mapping[str, str]) -> str:
    """The profile a run uses: "ci" under CI (`CI` set and not "0"/"false"), else HYPOTHESIS_PROFILE when set
    (one of HYPOTHESIS_PROFILES), else "ci"."""
    if environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return "ci"
    name = environ.get("HYPOTHESIS_PROFILE", "").strip() or "ci"
    if name not in HYPOTHESIS_PROFILES:
        raise pytest.UsageError(f"HYPOTHESIS_PROFILE={name!r} is not one of {', '.join(HYPOTHESIS_PROFILES)}")
    return name


settings.load_profile(hypothesis_profile(os.environ))


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
