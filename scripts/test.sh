#!/usr/bin/env bash
# The project's test command: installs what the tests need, then runs every test
# (both WAL backends are exercised by the parametrised suites; the simulated-disk
# crash tests need the `sim` feature; tests/full_disk.rs needs root, mkfs.ext4 and
# loop devices).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
if ! command -v mkfs.ext4 >/dev/null; then
    apt-get update -qq && apt-get install -y -qq e2fsprogs mount
fi
cargo build --all-targets --features sim
cargo test --all-targets --features sim -- --test-threads=2
