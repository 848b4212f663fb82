#!/usr/bin/env bash
# How fast the real broker compacts a partition, next to reading the same segment
# files sequentially (cat, page cache warm) in the same run. A benchmark, not a test.
#
#   [CODEC=gzip|snappy|lz4|zstd] [SEGMENT_BYTES=N] \
#       scripts/bench-compaction.sh [MESSAGES] [KEYS] [VALUE_BYTES] [REPS]
#
# Each repetition starts a broker on an empty data directory, creates a compacted
# topic (1 partition, SEGMENT_BYTES segments, default 16 MiB), produces MESSAGES
# keyed messages with kcat (key i % KEYS, compressed with CODEC if set), times
# `cat` of the closed segments, then waits for the broker's "compacted" log line
# and reports its bytes_read and elapsed_ms (the whole pass: key map, copies,
# fsyncs, renames).
#
# The broker's cleaner looks at the topic every CLEANER_BACKOFF_MS (default
# 3000) from the broker's start, whatever kcat and the timing are doing, and
# the broker has no switch to hold it off: its first pass may cover only the
# segments closed so far, while kcat still produces, or compact them all before
# `cat` is timed. Either way the pass and `cat` read different files, so a
# repetition fails unless the pass's bytes_read equals the bytes `cat` read
# (the sizes of the same files, when the pass read them).
#
# STREAMLINE_BIN overrides the binary (default: the release build in
# CARGO_TARGET_DIR or target/). Needs kcat and confluent-kafka
# (scripts/install-test-deps.sh). Data goes to a temporary directory under TMPDIR.
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-1000000}
KEYS=${2:-1000}
VALUE=${3:-100}
REPS=${4:-3}
CODEC=${CODEC:-none}
SEGMENT_BYTES=${SEGMENT_BYTES:-16777216}
CLEANER_BACKOFF_MS=${CLEANER_BACKOFF_MS:-3000}
BIN=${STREAMLINE_BIN:-${CARGO_TARGET_DIR:-target}/release/streamline}
[ -x "$BIN" ] || { echo "build first: cargo build --release (or set STREAMLINE_BIN)" >&2; exit 1; }
PYTHON=${PYTHON:-python3}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$PYTHON" - "$MESSAGES" "$KEYS" "$VALUE" "$work/input" <<'PY'
import sys
n, keys, size, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
with open(path, "w") as f:
    for i in range(n):
        f.write("key%d:%s\n" % (i % keys, ("v%d-" % i).ljust(size, "x")))
PY

for rep in $(seq "$REPS"); do
    dir="$work/run$rep"
    mkdir -p "$dir"
    "$BIN" --listen 127.0.0.1:0 --data-dir "$dir/data" --log-cleaner-backoff-ms "$CLEANER_BACKOFF_MS" >"$dir/out" 2>"$dir/log" &
    pid=$!
    for _ in $(seq 200); do grep -q listening "$dir/out" 2>/dev/null && break; sleep 0.05; done
    addr=$(awk '{print $NF}' "$dir/out")
    "$PYTHON" tests/clients/kafka_client.py create-with-configs "$addr" big \
        cleanup.policy=compact "segment.bytes=$SEGMENT_BYTES" >/dev/null
    kcat -b "$addr" -P -t big -K: -X acks=all -X linger.ms=5 -z "$CODEC" -l "$work/input"
    part="$dir/data/topics/big/0"
    # The closed segments: every log but the newest.
    mapfile -t closed < <(ls "$part"/*.log | sort | head -n -1)
    if [ "${#closed[@]}" -eq 0 ]; then
        echo "no closed segment: produce more messages or lower SEGMENT_BYTES" >&2
        exit 1
    fi
    cat "${closed[@]}" >/dev/null # warm, as the broker's own reads are
    start=$(date +%s.%N)
    cat "${closed[@]}" >/dev/null
    end=$(date +%s.%N)
    bytes=$(cat "${closed[@]}" | wc -c)
    for _ in $(seq 600); do grep -q ' compacted ' "$dir/log" && break; sleep 0.05; done
    line=$(grep ' compacted ' "$dir/log" | head -1) || {
        echo "no compaction within 30 s; broker log: $dir/log" >&2
        exit 1
    }
    kill -TERM "$pid" 2>/dev/null || true
    # A broker that stops with an error (its final flush failed) fails the run.
    code=0
    wait "$pid" || code=$?
    if [ "$code" != 0 ]; then
        echo "the broker exited with $code; its log: $dir/log" >&2
        exit 1
    fi
    "$PYTHON" - "$rep" "$start" "$end" "$bytes" "$line" "${#closed[@]}" "$CLEANER_BACKOFF_MS" <<'PY'
import re, sys
rep, start, end, cat_bytes, line = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
closed, backoff_ms = int(sys.argv[6]), sys.argv[7]
field = lambda k: int(re.search(r"\b%s=(\d+)" % k, line).group(1))
read, ms = field("bytes_read"), field("elapsed_ms")
# The pass must have read the files `cat` read: a pass that ran while kcat
# produced covered only the segments closed then, and one that ran before the
# timing left `cat` reading its compacted copy.
if not cat_bytes or read != cat_bytes:
    sys.exit("rep %s: the first compaction pass read %d bytes, `cat` read %d bytes of the %d closed "
             "segments: they did not read the same files (the cleaner runs every %s ms from the "
             "broker's start, so its first pass may have come while kcat was producing, or before "
             "`cat` was timed); no result. Run again, or set CLEANER_BACKOFF_MS longer than "
             "producing takes. The pass: %s" % (rep, read, cat_bytes, closed, backoff_ms, line.strip()))
cat_mb_s = cat_bytes / (end - start) / 1e6
pass_mb_s = read / (ms / 1e3) / 1e6 if ms else float("inf")
print("rep %s: compacted %.1f MB -> %.2f MB (%d records removed) in %d ms = %.0f MB/s; "
      "cat of the same segments %.0f MB/s; ratio %.2f" % (
          rep, read / 1e6, field("bytes_after") / 1e6, field("records_removed"), ms,
          pass_mb_s, cat_mb_s, pass_mb_s / cat_mb_s))
PY
    rm -rf "$dir"
done
