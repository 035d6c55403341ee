#!/usr/bin/env bash
# Create (once) and refresh the project's virtual environment in .venv, then fetch the demo data.
# Sourced by bin/demo.sh and bin/run-tests.sh. The optional extras "all" (dask for --scheduler, matplotlib for
# --qa) are always installed; EXTRAS adds more (e.g. "test").
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
VENV="$ROOT/.venv"
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating virtual environment $VENV" >&2
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
fi
extras="all${EXTRAS:+,$EXTRAS}"
stamp="$VENV/.processccd-installed-${extras//,/-}"
if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ]; then
    echo "setup: installing processccd[$extras] into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet -e "$ROOT[$extras]"
    touch "$stamp"
fi
"$VENV/bin/fetch-demo-data" "$ROOT"
export PATH="$VENV/bin:$PATH"
# numba compiles the pipeline's kernels on their first use and caches the machine code beside the sources
# (__pycache__, or a user cache directory for a read-only install); do it here, once, without data, rather than
# inside the first timed or parallel run.
kernels_stamp="$VENV/.processccd-kernels-compiled"
if [ ! -f "$kernels_stamp" ] || [ -n "$(find "$ROOT/src" -name '*.py' -newer "$kernels_stamp" -print -quit)" ]; then
    echo "setup: preparing the numba kernels (process-ccd --warm-up, after a change of the sources)" >&2
    "$VENV/bin/process-ccd" --warm-up
    touch "$kernels_stamp"
fi
