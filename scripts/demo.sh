#!/usr/bin/env bash
# The main job, from a fresh machine: sets up the wasm toolchain, builds Ova and the example
# work units, packs the Mandelbrot job into a bundle, starts a local network of 3 workers and
# a submitter on 127.0.0.1 (`ova demo`), has every tile computed by two different workers and
# verified by quorum, and assembles the verified tiles into out/mandelbrot.png.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out="$root/out"
mkdir -p "$out"

scripts/build-deps.sh

echo "== building the example work units (wasm32-wasip1)"
scripts/build-examples.sh >/dev/null

echo "== building ova (release)"
cargo build --release --quiet -p ova-worker --bin ova --bin ova-executor
ova="${CARGO_TARGET_DIR:-$root/target}/release/ova"

echo "== packing examples/mandelbrot"
"$ova" job pack examples/mandelbrot -o "$out/mandelbrot.ova"
"$ova" job inspect "$out/mandelbrot.ova"

echo "== a local network: 3 workers + a submitter on 127.0.0.1, quorum 2"
rm -rf "$out/mandelbrot-tiles"
"$ova" demo "$out/mandelbrot.ova" --workers 3 --quorum 2 -o "$out/mandelbrot-tiles"

echo "== assembling the image from the verified tiles"
cargo run --quiet --release --manifest-path examples/Cargo.toml -p mandelbrot --example assemble -- \
    "$out/mandelbrot-tiles" "$out/mandelbrot.png"
echo "wrote $out/mandelbrot.png"
