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
