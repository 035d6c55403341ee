#!/usr/bin/env bash
# The 2013 demo_small.sh: 6 of the 10 demo frames (4192 g^i^z, 6377 u^r^i), compared with
# detected-sources.txt.expected_small. Same as bin/demo.sh --small.
exec "$(dirname "${BASH_SOURCE[0]}")/demo.sh" --small "$@"
