#!/usr/bin/env bash
# Produce throughput of the real broker binary with a real client (confluent-kafka,
# acks=all): WAL disabled, then each sync mode. A benchmark, not a test.
#
#   scripts/bench-broker.sh [COUNT] [SIZE] [PARTITIONS] [PRODUCERS]
#
# COUNT messages per producer; PRODUCERS client processes run at once and the
# line per mode sums them. Only delivered (acknowledged) messages count towards
# msgs/s and MB/s; the line also gives how many failed and how many were still
# unacknowledged when a client stopped waiting. Any message not delivered, or any
# client that fails, makes the script exit 1 (after the line for that mode).
# The rates are over the producers' own window, from the first one's first
# produce to the last one's flush (`produce=`); `wall=` also counts starting
# the clients (the Python interpreter, imports, connecting: 0.2-0.4 s), which would
# add the same time to every mode and shrink the differences between them.
#
# STREAMLINE_BIN overrides the binary (default: the release build in CARGO_TARGET_DIR
# or target/). Data goes to a temporary directory under TMPDIR. TLS=1 serves TLS
# (a certificate made with the openssl command) and the producers connect with it.
# MODES lists the runs (default: wal_disabled interval every_write os_default).
set -euo pipefail
cd "$(dirname "$0")/.."
COUNT=${1:-200000}
SIZE=${2:-100}
PARTS=${3:-4}
PRODUCERS=${4:-1}
BIN=${STREAMLINE_BIN:-${CARGO_TARGET_DIR:-target}/release/streamline}
[ -x "$BIN" ] || { echo "build first: cargo build --release (or set STREAMLINE_BIN)" >&2; exit 1; }
PYTHON=${PYTHON:-python3}
MODES=${MODES:-wal_disabled interval every_write os_default}
TLS_ARGS=()
SUFFIX=""
if [ "${TLS:-0}" = 1 ]; then
    SUFFIX=+tls
    certs=$(mktemp -d)
    trap 'rm -rf "$certs"' EXIT
    (
        cd "$certs"
        ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
        openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.crt -days 2 -subj /CN=bench-ca
        openssl req "${ec[@]}" -keyout server.key -out server.csr -subj /CN=localhost
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' > server.ext
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
            -out server.crt -days 2 -extfile server.ext
    ) 2>/dev/null
    TLS_ARGS=(--tls-cert "$certs/server.crt" --tls-key "$certs/server.key")
    export BENCH_CLIENT_CONFIG="{\"security.protocol\": \"SSL\", \"ssl.ca.location\": \"$certs/ca.crt\"}"
fi

run_one() {
    local name=$1; shift
    local dir
    dir=$(mktemp -d)
    "$BIN" --listen 127.0.0.1:0 --data-dir "$dir/data" --default-partitions "$PARTS" "${TLS_ARGS[@]}" "$@" >"$dir/out" 2>"$dir/log" &
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
    # Every client's status (`wait` on several pids returns only the last one's).
    local status=0 c
    for c in "${clients[@]}"; do
        wait "$c" || status=1
    done
    end=$(date +%s.%N)
    # The broker's own CPU time (user + system, in clock ticks) since it started:
    # its cost per message, apart from the clients sharing the machine.
    local ticks
    ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    "$PYTHON" - "$name" "$start" "$end" "$COUNT" "$SIZE" "$PRODUCERS" "$ticks" "$(getconf CLK_TCK)" "$dir"/result.* <<'PY' || status=1
import json, sys
name, start, end, count, size, producers = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
cpu = int(sys.argv[7]) / int(sys.argv[8])
wall = end - start
total = count * producers
delivered = failed = remaining = 0
starts, ends = [], []
for f in sys.argv[9:]:
    try:
        r = json.loads(open(f).read())
        delivered += r["delivered"]
        failed += r["failed"]
        remaining += r["remaining"]
        starts.append(r["start"])
        ends.append(r["end"])
    except (OSError, ValueError, KeyError) as e:
        # A client that printed no report delivered nothing we can count.
        print("%s: no report from %s (%r)" % (name, f, e), file=sys.stderr)
        remaining += count
# The producers' own window; the wall time when no producer reported one.
took = max(ends) - min(starts) if starts else wall
took = took if took > 0 else wall
print("%-13s producers=%d msgs=%d delivered=%d failed=%d remaining=%d produce=%.2fs wall=%.2fs msgs/s=%d MB/s=%.1f broker_cpu_us/msg=%s" % (
    name, producers, total, delivered, failed, remaining, took, wall, delivered / took, delivered * size / took / 1e6,
    "%.2f" % (cpu * 1e6 / delivered) if delivered else "-"))
if delivered != total:
    print("%s: %d of %d messages not delivered" % (name, total - delivered, total), file=sys.stderr)
    sys.exit(1)
PY
    kill -TERM "$pid" 2>/dev/null || true
    # A broker that stops with an error (its final flush failed) fails the run,
    # whatever the clients saw.
    local code=0
    wait "$pid" || code=$?
    if [ "$code" != 0 ]; then
        echo "$name: the broker exited with $code; its log: $dir/log" >&2
        tail -5 "$dir/log" >&2
        return 1
    fi
    rm -rf "$dir"
    return "$status"
}

for mode in $MODES; do
    case $mode in
        wal_disabled) run_one "wal_disabled$SUFFIX" --wal-enabled false ;;
        interval | every_write | os_default) run_one "$mode$SUFFIX" --wal-sync-mode "$mode" ;;
        *) echo "unknown mode $mode" >&2; exit 2 ;;
    esac
done
