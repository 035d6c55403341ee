#!/usr/bin/env bash
# The test command: set up .venv (with the test extra) and the demo data, then run ruff and every test,
# including the slow real-data ones. Extra arguments go to pytest.
# Hypothesis runs derandomized (the 'ci' profile of tests/conftest.py) unless HYPOTHESIS_PROFILE=fuzz is set
# outside CI.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXTRAS=test source "$ROOT/bin/setup-venv.sh"
cd "$ROOT"
ruff check src tests bench
pytest -m "" "$@"
