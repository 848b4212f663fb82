#!/usr/bin/env bash
# Type-checks the crate for the platforms CI cannot run: macOS on Apple silicon
# and FreeBSD with every target (tests, benches, the `sim` feature), Intel macOS
# and Windows with the library and binaries (the tests need Unix). Warnings are
# errors, so code that is dead or mistyped outside Linux is caught here. Quickest
# after the main build (`cargo test --all-targets --features sim --no-run`).
#
# `cargo check` never links, so the C sources of dependencies (ring's) are
# "compiled" by a stand-in that writes empty objects: no cross compiler needed.
# Adds the Rust standard libraries of the targets with rustup when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Intel macOS compiles the same code as Apple silicon (nothing in the crate,
# its tests or benchmarks depends on the architecture there), so the library
# and binaries suffice for it.
targets_all=(aarch64-apple-darwin x86_64-unknown-freebsd)
targets_lib=(x86_64-apple-darwin x86_64-pc-windows-gnu)

installed=$(rustup target list --installed)
for t in "${targets_all[@]}" "${targets_lib[@]}"; do
    if ! grep -qx "$t" <<<"$installed"; then
        echo "check-platforms: adding the $t standard library (rustup)" >&2
        rustup target add "$t" </dev/null
    fi
done

stub=$(mktemp -d)
trap 'rm -rf "$stub"' EXIT
cat > "$stub/cc" <<'EOF'
#!/bin/sh
# Not MSVC (the cc crate asks with `-?`); every `-o FILE` gets an empty file.
[ "${1:-}" = "-?" ] && exit 1
prev=
for a in "$@"; do
    [ "$prev" = "-o" ] && : > "$a"
    prev=$a
done
exit 0
EOF
chmod +x "$stub/cc"

# The default target directory: the build scripts and proc macros built for
# this machine by an earlier build are reused (with RUSTFLAGS they would not be).
check() {
    local t=$1
    shift
    local var=${t//-/_} out
    echo "check-platforms: $t" >&2
    if ! out=$(env "CC_$var=$stub/cc" "AR_$var=ar" \
        cargo check --quiet --message-format short --target "$t" "$@" 2>&1); then
        printf '%s\n' "$out" >&2
        exit 1
    fi
    if grep -q warning <<<"$out"; then
        printf '%s\n' "$out" >&2
        echo "check-platforms: $t: warnings are errors here" >&2
        exit 1
    fi
}
for t in "${targets_all[@]}"; do check "$t" --all-targets --features sim; done
for t in "${targets_lib[@]}"; do check "$t" --lib --bins; done
echo "check-platforms: all targets type-check" >&2
