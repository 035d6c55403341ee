#!/usr/bin/env bash
# The processCcdSdss demo: fetch the data, process the 10 frames, export the 40-column list and compare it
# with the LSST 2013 output (detected-sources.txt.expected).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/bin/setup-venv.sh"
cd "$ROOT"
rm -rf output
echo "demo: processing run 4192 field 300 and run 6377 field 399, camcol 4, filters ugriz" >&2
process-ccd input \
    --id run=4192 filter=u^g^r^i^z camcol=4 field=300 \
    --id run=6377 filter=u^g^r^i^z camcol=4 field=399 \
    --output output
echo "demo: exporting the source list to detected-sources.txt" >&2
export-results output > detected-sources.txt
echo "demo: comparing detected-sources.txt with detected-sources.txt.expected" >&2
if compare-results detected-sources.txt detected-sources.txt.expected \
        --gate "$ROOT/configs/compare-gate.yaml"; then
    echo "demo: detected-sources.txt agrees with the LSST 2013 output within the gate" >&2
else
    echo "demo: detected-sources.txt differs from the LSST 2013 output beyond the gate (figures above)" >&2
    exit 1
fi
