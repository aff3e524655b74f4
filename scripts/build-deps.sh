#!/usr/bin/env bash
# What building Ova needs besides rustup's Rust: a C compiler (the linker, and the C parts of
# dependencies) and make (jemalloc, the `ova` binary's allocator, is built from its C source).
# Idempotent; installs the missing Debian packages when run as root.
set -euo pipefail
need=()
command -v make >/dev/null 2>&1 || need+=(make)
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "missing packages to build Ova (need root to install): ${need[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
