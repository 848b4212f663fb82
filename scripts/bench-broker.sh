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
    wait "${clients[@]}"
    end=$(date +%s.%N)
    # The broker's own CPU time (user + system, in clock ticks) since it started:
    # its cost per message, apart from the clients sharing the machine.
    local ticks
    ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    "$PYTHON" - "$name" "$start" "$end" "$COUNT" "$SIZE" "$PRODUCERS" "$ticks" "$(getconf CLK_TCK)" "$dir"/result.* <<'PY'
import json, sys
name, start, end, count, size, producers = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
cpu = int(sys.argv[7]) / int(sys.argv[8])
runs = [json.loads(open(f).read()) for f in sys.argv[9:]]
took = end - start
total = count * producers
print("%-13s producers=%d msgs=%d wall=%.2fs msgs/s=%d MB/s=%.1f failed=%d broker_cpu_us/msg=%.2f" % (
    name, producers, total, took, total / took, total * size / took / 1e6, sum(r["failed"] for r in runs),
    cpu * 1e6 / total))
PY
    kill -TERM "$pid"
    wait "$pid" || true
    rm -rf "$dir"
}

for mode in $MODES; do
    case $mode in
        wal_disabled) run_one "wal_disabled$SUFFIX" --wal-enabled false ;;
        interval | every_write | os_default) run_one "$mode$SUFFIX" --wal-sync-mode "$mode" ;;
        *) echo "unknown mode $mode" >&2; exit 2 ;;
    esac
done
