#!/usr/bin/env bash
# The project's test command: installs what the tests need (the real Kafka clients
# the broker tests drive; mkfs.ext4 for the full-disk test), then builds and runs
# every suite. WAL suites run on both backends (std and io_uring) inside each test;
# the simulated-disk suites need the `sim` feature, so the whole run uses it.
# tests/full_disk.rs and the power-cut tests need root, loop devices and FUSE.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# One clean build in CI: incremental state would only take disk (gigabytes).
if [ -n "${CI:-}" ]; then export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}; fi
# The build and the tests' data directories need a few GB; say how much there is,
# so a run that fails on a full disk says why.
df -h . | sed 's/^/disk: /'
# The crash and full-disk tests mount loop devices and FUSE file systems:
# without root they fail, after the build. Say so at once instead.
if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh: the tests need root (they mount loop devices and FUSE file systems); run it as root, e.g. sudo -E env PATH=\"\$PATH\" scripts/test.sh" >&2
    exit 1
fi
# /sbin is not on every PATH on Debian: the tests run mkfs.ext4 and ldconfig.
export PATH="$PATH:/usr/sbin:/sbin"
if ! command -v mkfs.ext4 >/dev/null; then
    apt-get update -qq </dev/null
    apt-get install -y -qq e2fsprogs mount </dev/null
fi
# How long each phase took, so a slow CI run says where the time went.
phase() { echo "test.sh: $1 done at ${SECONDS}s" >&2; }
scripts/install-test-deps.sh
phase "installing the test dependencies"
# One build, in the test profile the suites run in (a separate `cargo build`
# would compile every target a second time, unoptimised, for nothing).
cargo test --all-targets --features sim --no-run
phase "the build"
# The crate must build where it cannot be tested here (macOS, FreeBSD, Windows).
scripts/check-platforms.sh
phase "the platform check"
# The benchmark's comparison engines (okaywal, raft-engine) are an optional
# feature the suites do not build: type-check it so that it cannot rot.
cargo check --features compare --lib --bins
phase "the compare feature check"
# The fuzz targets (fuzz/, a workspace of its own, run with cargo-fuzz on
# nightly) are type-checked too, for the same reason; libfuzzer-sys's build
# compiles C++.
if ! command -v c++ >/dev/null; then
    apt-get update -qq </dev/null
    apt-get install -y -qq g++ </dev/null >/dev/null
fi
cargo check --manifest-path fuzz/Cargo.toml --bins
phase "the fuzz targets check"
cargo test --all-targets --features sim
phase "the suites"
# `--all-targets` leaves out the doctests: the examples in the API docs (a
# `no_run` one is still compiled). Cheap: the library is built by now.
cargo test --doc --features sim
phase "the doctests"
# The broker suites once more on the portable backend (the WAL suites already run
# every test on both backends).
args=()
for t in tests/broker_*.rs; do args+=(--test "$(basename "$t" .rs)"); done
STREAMLINE_WAL_BACKEND=std cargo test --features sim "${args[@]}"
phase "the broker suites on the std backend"
