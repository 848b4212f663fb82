#!/usr/bin/env bash
# Produce throughput of the real broker binary with a real client (confluent-kafka,
# acks=all): WAL disabled, then each sync mode. A benchmark, not a test.
#
#   scripts/bench-broker.sh [COUNT] [SIZE] [PARTITIONS] [PRODUCERS]
#
# COUNT messages per producer; PRODUCERS client processes run at once and the
# line per mode sums them.
#
# STREAMLINE_BIN overrides the binary (default: the release build in CARGO_TARGET_DIR
# or target/). Data goes to a temporary directory under TMPDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${1:-200000}
SIZE=${2:-100}
PARTS=${3:-4}
PRODUCERS=${4:-1}
BIN=${STREAMLINE_BIN:-${CARGO_TARGET_DIR:-target}/release/streamline}
[ -x "$BIN" ] || { echo "build first: cargo build --release (or set STREAMLINE_BIN)" >&2; exit 1; }
PYTHON=${PYTHON:-python3}

run_one() {
    local name=$1; shift
    local dir
    dir=$(mktemp -d)
    "$BIN" --listen 127.0.0.1:0 --data-dir "$dir/data" --default-partitions "$PARTS" "$@" >"$dir/out" 2>"$dir/log" &
    local pid=$!
    for _ in $(seq 200); do grep -q listening "$dir/out" 2>/dev/null && break; sleep 0.05; done
    local addr
    addr=$(awk '{print $NF}' "$dir/out")
    local start end i clients=()
    start=$(date +%s.%N)
    for i in $(seq "$PRODUCERS"); do
        "$PYTHON" tests/clients/kafka_client.py bench "$addr" bench "$COUNT" "$SIZE" "$PARTS" >"$dir/result.$i" &
        clients+=($!)
    done
    wait "${clients[@]}"
    end=$(date +%s.%N)
    "$PYTHON" - "$name" "$start" "$end" "$COUNT" "$SIZE" "$PRODUCERS" "$dir"/result.* <<'PY'
import json, sys
name, start, end, count, size, producers = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
runs = [json.loads(open(f).read()) for f in sys.argv[7:]]
took = end - start
total = count * producers
print("%-13s producers=%d msgs=%d wall=%.2fs msgs/s=%d MB/s=%.1f failed=%d" % (
    name, producers, total, took, total / took, total * size / took / 1e6, sum(r["failed"] for r in runs)))
PY
    kill -TERM "$pid"
    wait "$pid" || true
    rm -rf "$dir"
}

run_one wal_disabled --wal-enabled false
run_one interval --wal-sync-mode interval
run_one every_write --wal-sync-mode every_write
run_one os_default --wal-sync-mode os_default
