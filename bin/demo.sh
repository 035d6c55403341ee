#!/usr/bin/env bash
# The processCcdSdss demo: fetch the data, process the 10 frames, export the 40-column list and compare it
# with the LSST 2013 output (detected-sources.txt.expected).
# `bin/demo.sh --small` (or bin/demo_small.sh) is the 2013 demo_small.sh for memory-constrained machines: the 6
# frames 4192 g^i^z and 6377 u^r^i, compared with detected-sources.txt.expected_small through
# configs/compare-gate-small.yaml (the full gate; one pooled bound measured again on the 6 frames).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
small=0
for arg in "$@"; do
    case "$arg" in
        --small) small=1 ;;
        *) echo "usage: bin/demo.sh [--small]" >&2; exit 2 ;;
    esac
done
source "$ROOT/bin/setup-venv.sh"
cd "$ROOT"
rm -rf output
if [ "$small" = 1 ]; then
    echo "demo: processing run 4192 field 300 filters g i z and run 6377 field 399 filters u r i, camcol 4" >&2
    filters_4192="g^i^z" filters_6377="u^r^i" expected=detected-sources.txt.expected_small gate=compare-gate-small.yaml
else
    echo "demo: processing run 4192 field 300 and run 6377 field 399, camcol 4, filters ugriz" >&2
    filters_4192="u^g^r^i^z" filters_6377="u^g^r^i^z" expected=detected-sources.txt.expected gate=compare-gate.yaml
fi
process-ccd input \
    --id run=4192 filter=$filters_4192 camcol=4 field=300 \
    --id run=6377 filter=$filters_6377 camcol=4 field=399 \
    --output output
echo "demo: exporting the source list to detected-sources.txt" >&2
export-results output > detected-sources.txt
echo "demo: comparing detected-sources.txt with $expected" >&2
if compare-results detected-sources.txt "$expected" --gate "$ROOT/configs/$gate"; then
    echo "demo: detected-sources.txt agrees with the LSST 2013 output ($expected) within the gate" >&2
else
    echo "demo: detected-sources.txt differs from the LSST 2013 output ($expected) beyond the gate (figures above)" >&2
    exit 1
fi
