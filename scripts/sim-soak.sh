#!/usr/bin/env bash
# Simulated-disk soak: the randomized power-loss / I/O-fault test over many seeds
# (release build). Prints seeds run, time and failing seeds (each replayable with
# SIM_SEED=N cargo test --features sim --test sim_crash), and why a run failed:
# each panic's message, or the end of the output when the build or the run failed
# before any test reported.
#
#   scripts/sim-soak.sh [SEEDS] [FIRST_SEED]     (default 100000 seeds from 1)
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
SIM_SEEDS=${1:-100000} SIM_SEED_START=${2:-1} \
    cargo test --release --features sim --test sim_crash -- --nocapture \
    sim_power_loss_and_faults_keep_every_invariant > "$log" 2>&1 || status=$?
# A panic's message follows "panicked at" (an assertion's on three lines).
awk '/^(sim:|FAILED|test result)/ { print; next }
     /panicked at/ { print; n = 3; next }
     n > 0 { print; n-- }' "$log"
if [ "$status" -ne 0 ] && ! grep -q 'panicked at' "$log"; then
    echo "sim-soak: cargo test exited with $status; the end of its output:"
    tail -n 40 "$log"
fi
exit "$status"
