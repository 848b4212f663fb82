#!/usr/bin/env bash
# Failing-device soak: the random device failure test of src/wal/mod.rs
# (a_device_failing_at_random_moments_loses_no_acknowledged_entry: ext4 on a
# loop device whose writes start failing at a seeded moment under 4 writer
# threads, then remounted and recovered) with more seeds, per backend, odd seeds
# every_write and even seeds interval. Prints one line per seed and backend and
# the totals per mode (with every_write, recovered equals acknowledged or more);
# exits non-zero unless every seed passed. Needs root, /dev/fuse, loop devices
# (scripts/install-test-deps.sh).
#
#   scripts/device-failure-soak.sh [SEEDS] [FIRST_SEED]   (default 100 seeds from 1)
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-100}
first=${2:-1}
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
DEVICE_FAILURE_SEEDS=$seeds DEVICE_FAILURE_FIRST_SEED=$first \
    cargo test --lib -- a_device_failing_at_random_moments --nocapture 2>&1 \
    | tee "$log" | grep -E '^device-failure|panicked' || true
grep -q 'test result: ok' "$log" || status=1
# Per sync mode: acknowledged, synced (interval: the highest sequence a
# successful sync returned) and recovered entries, summed over the runs.
grep '^device-failure: ' "$log" \
    | sed -E 's/^device-failure: [a-z]+ ([A-Za-z]+) .*acknowledged ([0-9]+) synced ([0-9]+) recovered ([0-9]+);.*/\1 \2 \3 \4/' \
    | awk '{ n[$1]++; a[$1] += $2; s[$1] += $3; r[$1] += $4 }
           END { for (m in n) printf "%s: runs %d, acknowledged %d, synced %d, recovered %d\n", m, n[m], a[m], s[m], r[m] }'
exit $status
