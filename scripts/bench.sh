#!/usr/bin/env bash
# Runs the benchmark matrix of docs/benchmarks.md and rewrites its tables:
# fio's ceiling, with/without WAL per sync mode, writer scaling against the anchors,
# many outstanding appends, recovery of a 1 GiB WAL, and the latency plot.
#
#   scripts/bench.sh                 # whole matrix (~12 minutes on 2 cores)
#   REPS=1 DURATION=1 scripts/bench.sh   # quick look
#
# Environment: BENCH_DIR (scratch space on the filesystem under test; default
# ./bench-data), REPS (repetitions; medians are reported; default 3), DURATION
# (seconds per harness job; default 1.5), WARMUP (default 0.5; RETIRE_WARMUP, default
# 4, for the jobs that retire files as they go), SKIP_FIO=1,
# SKIP_CRITERION=1.
# Run nothing else heavy at the same time: every number is a ratio to a baseline
# measured in the same run, but a busy CPU still moves them.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BENCH_DIR=${BENCH_DIR:-$ROOT/bench-data}
REPS=${REPS:-3}
DURATION=${DURATION:-1.5}
WARMUP=${WARMUP:-0.5}
RETIRE_WARMUP=${RETIRE_WARMUP:-4}
OUT=$ROOT/docs/bench-results
RAW=$OUT/raw
mkdir -p "$RAW" "$BENCH_DIR"
rm -f "$RAW"/*.jsonl "$RAW"/*.json "$RAW"/*.txt "$RAW"/*.hgrm

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# --- tools ---------------------------------------------------------------------
# fio gives the device's ceiling that several targets are ratios to; without it
# those rows would read "not measured".
if [ "${SKIP_FIO:-0}" != 1 ] && ! command -v fio > /dev/null; then
  log "installing fio"
  if ! { apt-get update -qq && apt-get install -y -qq fio; } < /dev/null > "$RAW/fio-install.txt" 2>&1; then
    log "could not install fio (see $RAW/fio-install.txt); its rows will read 'not measured'"
  fi
fi

# --- build ---------------------------------------------------------------------
FEATURES="--features compare"
if ! cargo build --release $FEATURES --bin streamline-bench 2> "$RAW/build-compare.txt"; then
  log "build with --features compare failed (see $RAW/build-compare.txt); anchors skipped"
  FEATURES=""
  cargo build --release --bin streamline-bench
fi
BIN=$CARGO_TARGET_DIR/release/streamline-bench
ANCHORS=""
[ -n "$FEATURES" ] && ANCHORS="okaywal raft-engine"

# --- machine -------------------------------------------------------------------
{
  echo "date_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "nproc=$(nproc)"
  echo "cpu=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
  echo "kernel=$(uname -r)"
  echo "fs=$(findmnt -n -T "$BENCH_DIR" -o FSTYPE,SOURCE | tr -s ' ')"
  dev=$(basename "$(findmnt -n -T "$BENCH_DIR" -o SOURCE)")
  q=/sys/block/$dev/queue
  if [ -d "$q" ]; then
    echo "device=$dev write_cache=$(tr ' ' _ < $q/write_cache) fua=$(cat $q/fua 2>/dev/null || echo ?) logical_block=$(cat $q/logical_block_size) scheduler=$(sed 's/.*\[\(.*\)\].*/\1/' $q/scheduler)"
  fi
  echo "mount_options=$(findmnt -n -T "$BENCH_DIR" -o OPTIONS)"
  echo "mem_gib=$(free -g | awk '/Mem:/ {print $2}')"
  echo "load_before=$(cut -d' ' -f1-3 /proc/loadavg)"
  echo "reps=$REPS duration_s=$DURATION warmup_s=$WARMUP retire_warmup_s=$RETIRE_WARMUP"
  echo "anchors=${ANCHORS:-none}"
  echo "fio=$(fio --version 2>/dev/null || echo missing)"
} > "$RAW/machine.txt"

rotated() { # rotated K ITEMS... : the ITEMS, one per line, rotated left by K
  local k=$1 i; shift
  local items=("$@")
  for ((i = 0; i < ${#items[@]}; i++)); do
    printf '%s\n' "${items[$(((i + k) % ${#items[@]}))]}"
  done
}

run() { # run NAME ARGS... : one harness invocation, JSON lines appended to raw/NAME.jsonl
  local name=$1; shift
  "$BIN" --dir "$BENCH_DIR" --quiet --cleanup --output-format json "$@" >> "$RAW/$name.jsonl"
}

# --- fio ceiling ---------------------------------------------------------------
if [ "${SKIP_FIO:-0}" != 1 ] && command -v fio > /dev/null; then
  FIO_FILE=$BENCH_DIR/fio.dat
  for rep in $(seq "$REPS"); do
    for bs in 4k 64k 1m; do
      log "fio write+fdatasync bs=$bs rep $rep"
      # Overwrites a laid-out file, as the WAL overwrites its zero-filled files.
      fio --name=wsync --filename="$FIO_FILE" --size=1g --overwrite=1 --rw=write --bs=$bs \
        --ioengine=sync --direct=1 --fdatasync=1 --time_based --runtime=2 --ramp_time=0.5 \
        --output-format=json --output="$RAW/fio-sync-$bs-$rep.json" > /dev/null
    done
    # The queue-depth-64 job's own pattern at the device: ~1 MiB of durable
    # writes in flight, 4 x 256 KiB O_DSYNC (the WAL's batches), into space only
    # reserved (fallocate, never written: a new WAL file after large writes) and
    # into written space (a recycled file).
    log "fio 4 x 256 KiB O_DSYNC into reserved space rep $rep"
    rm -f "$FIO_FILE"
    fio --name=dsync-new --filename="$FIO_FILE" --size=2g --fallocate=native --rw=write --bs=256k \
      --ioengine=io_uring --direct=1 --iodepth=4 --sync=dsync \
      --output-format=json --output="$RAW/fio-dsync-reserved-$rep.json" > /dev/null
    log "fio 4 x 256 KiB O_DSYNC into written space rep $rep"
    fio --name=dsync-over --filename="$FIO_FILE" --size=1g --overwrite=1 --rw=write --bs=256k \
      --ioengine=io_uring --direct=1 --iodepth=4 --sync=dsync --time_based --runtime=2 --ramp_time=0.5 \
      --output-format=json --output="$RAW/fio-dsync-written-$rep.json" > /dev/null
    log "fio bandwidth iodepth=32 rep $rep"
    fio --name=bw --filename="$FIO_FILE" --size=1g --overwrite=1 --rw=write --bs=1m \
      --ioengine=io_uring --direct=1 --iodepth=32 --time_based --runtime=2 --ramp_time=0.5 \
      --output-format=json --output="$RAW/fio-bw-qd32-$rep.json" > /dev/null
  done
  rm -f "$FIO_FILE"
fi

COMMON=(--duration "$DURATION" --warmup "$WARMUP")

for rep in $(seq "$REPS"); do
  # --- with and without the WAL, per sync mode ---------------------------------
  # Every invocation of several jobs runs them in an order rotated with the rep
  # (`rotated`), so that what a job leaves behind (freed memory, page cache,
  # files the next job's --cleanup removes) does not always fall on the same
  # job; the first rep keeps the order written here.
  log "sync modes rep $rep"
  for qd in 1 64; do
    jobs=()
    for e in $(rotated "$((rep - 1))" engine=nowal,queue-depth=1 \
      "sync-mode=interval,queue-depth=$qd,backend=uring" \
      "sync-mode=interval,queue-depth=$qd,backend=std" \
      "sync-mode=os_default,queue-depth=$qd,backend=uring" \
      "sync-mode=every_write,queue-depth=$qd,backend=uring"); do jobs+=(--job "$e"); done
    run syncmodes "${COMMON[@]}" --writers 4 --record-size 1024 "${jobs[@]}"
  done

  # --- scaling: writers x record size, every_write, closed loop ----------------
  # The engines' order rotates with the rep, as above; the first rep, which
  # writes the latency plots and their hist-*-N.hgrm files (N: the job's
  # place), keeps the order below.
  engines=(backend=uring backend=std engine=naive)
  for a in $ANCHORS; do engines+=("engine=$a"); done
  for size in 128 1024; do
    for w in 1 4 16 64 256; do
      log "scaling size=$size writers=$w rep $rep"
      jobs=()
      for e in $(rotated "$((rep - 1))" "${engines[@]}"); do jobs+=(--job "$e"); done
      plot=()
      if [ "$rep" = 1 ] && [ "$size" = 1024 ] && { [ "$w" = 1 ] || [ "$w" = 64 ]; }; then
        plot=(--plot "$OUT/latency-w$w-1KiB.svg" --hist-file "$RAW/hist-w$w-1KiB.hgrm")
      fi
      run scaling "${COMMON[@]}" --writers "$w" --record-size "$size" "${jobs[@]}" "${plot[@]}"
    done
  done

  # --- peak memory at 256 writers: each engine alone in its own process ---------
  # A process that ran other jobs first keeps what they left (the allocator's
  # free pools, their threads' cached stacks, their histograms), and a job's
  # peak would be the larger of its own and that.
  for size in 128 1024; do
    log "memory at 256 writers size=$size rep $rep"
    for e in $(rotated "$((rep - 1))" "${engines[@]}"); do
      run rss "${COMMON[@]}" --writers 256 --record-size "$size" --job "$e"
    done
  done

  # --- 64 closed-loop writers as tasks awaiting their acknowledgements ----------
  log "64 writers as async tasks rep $rep"
  jobs=()
  for e in $(rotated "$((rep - 1))" async-workers=1 async-workers=2); do jobs+=(--job "$e"); done
  run async64 "${COMMON[@]}" --writers 64 --record-size 1024 --backend uring "${jobs[@]}"

  # --- 64 writers with data retired as it goes -----------------------------------
  # Every 50 ms streamline checkpoints what is acknowledged and raft-engine purges
  # expired files, so both recycle retired files (okaywal always does); the long
  # warm-up gets every engine past its first rotations and into recycled files.
  log "64 writers, files retired and recycled, rep $rep"
  retire=(backend=uring,checkpoint-ms=50 backend=std,checkpoint-ms=50)
  for a in $ANCHORS; do
    if [ "$a" = okaywal ]; then retire+=(engine=okaywal); else retire+=("engine=$a,checkpoint-ms=50"); fi
  done
  jobs=()
  for e in $(rotated "$((rep - 1))" "${retire[@]}"); do jobs+=(--job "$e"); done
  run retire64 --duration "$DURATION" --warmup "$RETIRE_WARMUP" --writers 64 --record-size 1024 "${jobs[@]}"

  # --- many outstanding appends --------------------------------------------------
  log "queue depth 64 x 4 KiB rep $rep"
  # Without checkpoints every file is new, prepared while the WAL writes into the
  # current one (after writes this large only reserved, not zero-filled); with
  # them (as in the broker), retired files are recycled.
  jobs=()
  for e in $(rotated "$((rep - 1))" backend=uring backend=std \
    backend=uring,checkpoint-ms=50 backend=std,checkpoint-ms=50); do jobs+=(--job "$e"); done
  run qd64 "${COMMON[@]}" --writers 4 --queue-depth 64 --record-size 4096 "${jobs[@]}"
done

# --- recovery of a 1 GiB WAL ------------------------------------------------------
# Cold: the page cache is dropped before the reopen (needs root), so the scan reads
# the device. Warm: the std backend's buffered writes leave the files cached.
# The device's read bandwidth drifts a lot on this VM (0.5-1.25 GB/s within an
# hour), so its ceiling is read with fio right before each cold scan.
for rep in $(seq "$REPS"); do
  if [ "${SKIP_FIO:-0}" != 1 ] && command -v fio > /dev/null; then
    log "fio sequential read rep $rep"
    fio --name=rd --filename="$BENCH_DIR/fio-read.dat" --size=1g --rw=read --bs=4m \
      --ioengine=io_uring --direct=1 --iodepth=4 \
      --output-format=json --output="$RAW/fio-read-$rep.json" > /dev/null
    rm -f "$BENCH_DIR/fio-read.dat"
  fi
  log "recovery 1 GiB rep $rep"
  run recovery --engine streamline --backend uring --sync-mode os_default --writers 4 \
    --queue-depth 16 --record-size 64k --records 16384 --reopen --drop-caches
  run recovery --engine streamline --backend std --sync-mode os_default --writers 4 \
    --queue-depth 16 --record-size 64k --records 16384 --reopen
done

# --- criterion micro-benchmarks ------------------------------------------------------
# Their table is filled only from a run made now: with SKIP_CRITERION=1 whatever is
# left in target/criterion comes from an earlier build, and the table says so.
CRITERION_RESULTS=
if [ "${SKIP_CRITERION:-0}" != 1 ]; then
  log "criterion benches"
  rm -rf "$CARGO_TARGET_DIR/criterion"
  cargo bench $FEATURES --bench format --bench commit --bench recovery -- --warm-up-time 0.5 --measurement-time 1.5 \
    > "$RAW/criterion.txt" 2>&1
  CRITERION_RESULTS=$CARGO_TARGET_DIR/criterion
fi

echo "load_after=$(cut -d' ' -f1-3 /proc/loadavg)" >> "$RAW/machine.txt"
log "summarising into docs/benchmarks.md"
CRITERION_DIR=$CRITERION_RESULTS python3 scripts/bench_tables.py "$OUT" docs/benchmarks.md
log "done"
