#!/usr/bin/env bash
# The project's test command: installs what the tests need, then runs every test
# (both WAL backends are exercised by the parametrised suites).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
cargo build --all-targets
cargo test --all-targets -- --test-threads=2
