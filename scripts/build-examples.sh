#!/usr/bin/env bash
# Builds every example work unit in examples/ to wasm32-wasip1 and puts the modules in
# examples/wasm/NAME.wasm, where the examples' ova.toml manifests point.
# Installs the wasm toolchain first if needed (scripts/wasm-toolchain.sh). Idempotent and
# fast when nothing changed.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/wasm-toolchain.sh" install
target_dir=${OVA_EXAMPLES_TARGET_DIR:-$root/examples/target}
cd "$root/examples"
"$root/scripts/wasm-toolchain.sh" cargo build --release --quiet --target-dir "$target_dir"
mkdir -p "$root/examples/wasm"
for f in "$target_dir"/wasm32-wasip1/release/*.wasm; do
    [ -e "$f" ] || continue
    cmp -s "$f" "$root/examples/wasm/$(basename "$f")" || cp -f "$f" "$root/examples/wasm/"
done
ls "$root/examples/wasm"
