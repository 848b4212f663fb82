#!/usr/bin/env bash
# Failing-device soak: the random device failure tests with more seeds, per
# backend. `wal` is a_device_failing_at_random_moments_loses_no_acknowledged_entry
# (src/wal/mod.rs: 4 writer threads on the WAL alone, odd seeds every_write, even
# seeds interval); `storage` is ..._loses_no_acknowledged_produce
# (src/storage/mod.rs: 4 producers on two partitions through TopicManager,
# every_write, small segments and WAL files, frequent checkpoints). Both put ext4
# on a loop device whose writes start failing at a seeded moment, then remount
# and recover. Prints one line per seed and backend and the totals (with
# every_write, recovered equals acknowledged or more); exits non-zero unless
# every seed passed. Needs root, /dev/fuse, loop devices
# (scripts/install-test-deps.sh).
#
#   scripts/device-failure-soak.sh [SEEDS] [FIRST_SEED] [wal|storage|both]
#   (default 100 seeds from 1, both)
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${1:-100}
first=${2:-1}
which=${3:-both}
# The filter, and how many tests it must run (a filter matching nothing would
# still end with "test result: ok").
case $which in
    wal) filter=loses_no_acknowledged_entry; expect=1 ;;
    storage) filter=loses_no_acknowledged_produce; expect=1 ;;
    both) filter=a_device_failing_at_random_moments; expect=2 ;;
    *) echo "usage: $0 [SEEDS] [FIRST_SEED] [wal|storage|both]" >&2; exit 2 ;;
esac
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
DEVICE_FAILURE_SEEDS=$seeds DEVICE_FAILURE_FIRST_SEED=$first \
STORAGE_FAILURE_SEEDS=$seeds STORAGE_FAILURE_FIRST_SEED=$first \
    cargo test --features sim --lib -- "$filter" --nocapture 2>&1 \
    | tee "$log" | grep -E '^(storage-)?device-failure|panicked' || true
grep -q 'test result: ok' "$log" || status=1
passed=$(sed -nE 's/^test result: ok\. ([0-9]+) passed.*/\1/p' "$log" | awk '{ n += $1 } END { print n + 0 }')
if [ "$passed" -lt "$expect" ]; then
    echo "$passed test(s) passed, expected $expect: the filter '$filter' ran too few" >&2
    status=1
fi
# WAL, per sync mode: acknowledged, synced (interval: the highest sequence a
# successful sync returned) and recovered entries, summed over the runs.
{ grep '^device-failure: ' "$log" || true; } \
    | sed -E 's/^device-failure: [a-z]+ ([A-Za-z]+) .*acknowledged ([0-9]+) synced ([0-9]+) recovered ([0-9]+);.*/\1 \2 \3 \4/' \
    | awk '{ n[$1]++; a[$1] += $2; s[$1] += $3; r[$1] += $4 }
           END { for (m in n) printf "wal %s: runs %d, acknowledged %d, synced %d, recovered %d\n", m, n[m], a[m], s[m], r[m] }'
# Storage: acknowledged produces and recovered batches (both partitions).
{ grep '^storage-device-failure: ' "$log" || true; } \
    | sed -E 's/.*acknowledged ([0-9]+) recovered ([0-9]+) \+ ([0-9]+);.*/\1 \2 \3/' \
    | awk '{ n++; a += $1; r += $2 + $3 }
           END { if (n) printf "storage: runs %d, acknowledged %d, recovered %d\n", n, a, r }'
exit $status
