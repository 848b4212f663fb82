#!/usr/bin/env bash
# Simulated-disk soak: the randomized power-loss / I/O-fault test over many seeds
# (release build). Prints seeds run, time and failing seeds (each replayable with
# SIM_SEED=N cargo test --features sim --test sim_crash).
#
#   scripts/sim-soak.sh [SEEDS] [FIRST_SEED]     (default 100000 seeds from 1)
set -euo pipefail
cd "$(dirname "$0")/.."
SIM_SEEDS=${1:-100000} SIM_SEED_START=${2:-1} \
    cargo test --release --features sim --test sim_crash -- --nocapture 2>&1 | grep -E '^(sim:|FAILED|test result)'
