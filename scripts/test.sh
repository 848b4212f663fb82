#!/usr/bin/env bash
# The project's test command: installs what the tests need (the real Kafka clients
# the broker tests drive), then builds and runs every suite. WAL suites run on both
# backends (std and io_uring) inside each test; the simulated-disk suites need the
# `sim` feature, so the whole run uses it.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
scripts/install-test-deps.sh
cargo build --all-targets --features sim
cargo test --all-targets --features sim
