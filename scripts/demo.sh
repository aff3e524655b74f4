#!/usr/bin/env bash
# The main job, from a fresh machine: sets up the wasm toolchain, builds Ova and the example
# work units, packs the Mandelbrot job into a bundle, runs its units on this machine's cores in
# the sandbox, and assembles the tiles into out/mandelbrot.png.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out="$root/out"
mkdir -p "$out"

echo "== building the example work units (wasm32-wasip1)"
scripts/build-examples.sh >/dev/null

echo "== building ova (release)"
cargo build --release --quiet -p ova-worker --bin ova --bin ova-executor
ova="${CARGO_TARGET_DIR:-$root/target}/release/ova"

echo "== packing examples/mandelbrot"
"$ova" job pack examples/mandelbrot -o "$out/mandelbrot.ova"
"$ova" job inspect "$out/mandelbrot.ova"

echo "== running every unit locally in the sandbox"
rm -rf "$out/mandelbrot-tiles"
"$ova" run "$out/mandelbrot.ova" -o "$out/mandelbrot-tiles"

echo "== assembling the image"
cargo run --quiet --release --manifest-path examples/Cargo.toml -p mandelbrot --example assemble -- \
    "$out/mandelbrot-tiles" "$out/mandelbrot.png"
echo "wrote $out/mandelbrot.png"
