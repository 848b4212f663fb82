#!/usr/bin/env bash
# kill -9 soak: hundreds of SIGKILL cycles of a real writer process per backend and
# sync mode (tests/wal_crash.rs with more cycles), and as many power cuts under it
# (the power_cut_* tests; root). Prints cycles, acknowledged and lost entries
# (acknowledged `interval` entries a power cut took from the end are not lost:
# that mode does not promise them), and how many acknowledged entries were read
# back and compared (the rest were covered by a checkpoint and retired before
# the kill); exits non-zero unless lost is 0 and every cycle passed.
#
#   scripts/crash-soak.sh [CYCLES] [THREADS]   (default 300 per backend and mode, 4 writer threads)
#   POWER_CYCLES=N scripts/crash-soak.sh ...   (another count of power cuts; default CYCLES, at least 20)
set -euo pipefail
cd "$(dirname "$0")/.."
cycles=${1:-300}
threads=${2:-4}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
# At least 20 power cuts: a cut may find nothing unflushed, and each power-cut
# test fails when none of its cuts destroyed anything.
power=${POWER_CYCLES:-$(( cycles > 20 ? cycles : 20 ))}
# The kill and power-cut cycles only: the checker's own tests panic by design.
CRASH_CYCLES=$cycles POWER_CYCLES=$power CRASH_THREADS=$threads cargo test --test wal_crash -- --nocapture --test-threads=1 kill9 power_cut 2>&1 | tee "$log" | grep -E '^crash|LOST|panicked' || true
if ! grep -q 'test result: ok' "$log"; then
    status=1
fi
awk '/^crash: / { c += $5; a += $7; l += $9; k += $11 }
     END { printf "cycles %d acknowledged %d lost %d checked %d\n", c, a, l, k; exit (l != 0) }' "$log" || status=1
exit $status
