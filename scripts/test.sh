#!/usr/bin/env bash
# The whole test suite, as CI runs it: `scripts/test.sh` from the repository root.
#
# 1. builds the example work units to wasm (installing make, a C compiler and the wasm
#    toolchain if needed),
# 2. checks formatting, lints and the API docs' links (warnings are errors),
# 3. runs every test of every crate (with cargo-nextest when installed, which kills and
#    reports a test that hangs; then the doctests),
# 4. checks, lints and tests the example jobs natively (their own workspace, examples/).
#
# Set CARGO_TARGET_DIR to reuse a build directory between clones (CI does).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

step() { printf '\n== %s ==\n' "$*"; }

step "build tools, and the wasm examples"
scripts/build-deps.sh
scripts/build-examples.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "cargo doc (a broken or private link in the docs is an error)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
    # nextest kills a hung test and reports it (.config/nextest.toml) instead of stalling.
    cargo nextest run --workspace --locked --profile ci
    cargo test --workspace --locked --doc
else
    cargo test --workspace --locked
fi

step "example jobs, natively (examples/ is a workspace of its own)"
(
    cd examples
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --locked --release -- -D warnings
    cargo test --workspace --locked --release
)
