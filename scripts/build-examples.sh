#!/usr/bin/env bash
# Builds every example work unit in examples/ to wasm32-wasip1 and puts the modules in
# examples/wasm/NAME.wasm, where the examples' ova.toml manifests point.
# Installs the wasm toolchain first if needed (scripts/wasm-toolchain.sh). Idempotent and
# fast when nothing changed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/wasm-toolchain.sh" install
cd "$root/examples"
"$root/scripts/wasm-toolchain.sh" cargo build --release --quiet --target-dir "$root/examples/target"
mkdir -p "$root/examples/wasm"
for f in "$root"/examples/target/wasm32-wasip1/release/*.wasm; do
    [ -e "$f" ] || continue
    cmp -s "$f" "$root/examples/wasm/$(basename "$f")" || cp -f "$f" "$root/examples/wasm/"
done
ls "$root/examples/wasm"
