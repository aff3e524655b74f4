#!/usr/bin/env bash
# Ova's wasm toolchain step: makes sure this machine can build Rust guests for wasm32-wasip1.
#
#   scripts/wasm-toolchain.sh check     exit 0 if a toolchain is ready, print which one
#   scripts/wasm-toolchain.sh install   make one ready (idempotent; fast when already set up)
#   OVA_WASM_ROUTE=debian|rustup      force one route
#   scripts/wasm-toolchain.sh cargo ARGS...
#                                       run `cargo ARGS --target wasm32-wasip1` with the ready toolchain
#
# Two routes, tried in this order:
#  1. rustup's own `wasm32-wasip1` target, when it is installed (or `rustup target add` works).
#  2. Debian 12's rustc-web/cargo-web 1.96 with the matching library sources (rust-web-src),
#     building std from source (-Zbuild-std), linking with Debian's wasi-libc. This is for
#     machines whose rustup cannot download targets (no internet but package mirrors). Old
#     wasi-libc lacks the single-threaded pthread stubs std references, so we add weak stubs
#     (pthread_create fails with EAGAIN, as current wasi-libc does) to a private copy of libc.a.
#
# Guests are built with SIMD128 on: measured here it closes most of the gap to native on
# loop-heavy code, and it is deterministic apart from NaN bit patterns (see DESIGN.md).
set -euo pipefail

TARGET=wasm32-wasip1
GUEST_RUSTFLAGS="-C target-feature=+simd128"
DEB_PKGS=(rustc-web cargo-web rust-web-src rust-web-llvm lld-22 wasi-libc)
DEB_RUSTC=/usr/bin/rustc
DEB_CARGO=/usr/bin/cargo
WASI_LIBC_DIR=/usr/lib/wasm32-wasi
SC_DIR=/usr/lib/rustlib/wasm32-wasip1/lib/self-contained
STUB_VERSION=v1

log() { echo "[wasm-toolchain] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

rustup_has_target() {
    command -v rustup >/dev/null 2>&1 && rustup target list --installed 2>/dev/null | grep -qx "$TARGET"
}

deb_missing() {
    local p
    for p in "${DEB_PKGS[@]}"; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q '^install ok installed$' || echo "$p"
    done
}

deb_ready() {
    [ -z "$(deb_missing)" ] && [ -f "$SC_DIR/libc.a" ] && [ -f "$SC_DIR/crt1-command.o" ] \
        && [ "$(cat "$SC_DIR/.ova-stamp" 2>/dev/null)" = "$(stamp)" ]
}

stamp() { echo "$(stat -c %Y "$WASI_LIBC_DIR/libc.a" 2>/dev/null || echo none)-$STUB_VERSION"; }

route() {
    # OVA_WASM_ROUTE=debian|rustup forces a route (to test the other one on a machine that has both).
    case "${OVA_WASM_ROUTE:-}" in
        debian) if deb_ready; then echo debian; else echo none; fi; return ;;
        rustup) if rustup_has_target; then echo rustup; else echo none; fi; return ;;
    esac
    if rustup_has_target; then echo rustup; elif deb_ready; then echo debian; else echo none; fi
}

install_debian() {
    local todo
    todo=$(deb_missing | tr '\n' ' ')
    if [ -n "${todo// /}" ]; then
        [ "$(id -u)" = 0 ] || die "need root to install: $todo (or install rustup's $TARGET target)"
        export DEBIAN_FRONTEND=noninteractive
        if ! apt-cache policy rustc-web 2>/dev/null | grep -q 'Candidate: 1\.9[6-9]'; then
            log "apt-get update"
            apt-get update -qq
        fi
        log "apt-get install $todo"
        # shellcheck disable=SC2086
        apt-get install -y -q --no-install-recommends $todo >/tmp/ova-wasm-apt.log 2>&1 \
            || { tail -n 20 /tmp/ova-wasm-apt.log >&2; die "apt-get install failed"; }
    fi
    [ -d /usr/lib/rustlib/src/rust/library/std ] || die "rust-web-src library sources missing"
    if [ "$(cat "$SC_DIR/.ova-stamp" 2>/dev/null)" != "$(stamp)" ] || [ ! -f "$SC_DIR/libc.a" ]; then
        [ "$(id -u)" = 0 ] || die "need root to write $SC_DIR"
        log "setting up $SC_DIR from $WASI_LIBC_DIR (+ pthread stubs)"
        local tmp
        tmp=$(mktemp -d)
        cat > "$tmp/stubs.ll" <<'LL'
target triple = "wasm32-unknown-wasi"
define weak i32 @pthread_attr_init(ptr %a) { ret i32 0 }
define weak i32 @pthread_attr_setstacksize(ptr %a, i32 %s) { ret i32 0 }
define weak i32 @pthread_attr_destroy(ptr %a) { ret i32 0 }
define weak i32 @pthread_create(ptr %t, ptr %a, ptr %f, ptr %arg) { ret i32 6 }
define weak i32 @pthread_detach(ptr %t) { ret i32 0 }
define weak i32 @pthread_join(ptr %t, ptr %r) { ret i32 28 }
LL
        llc-22 -O2 -filetype=obj -mtriple=wasm32-unknown-wasi "$tmp/stubs.ll" -o "$tmp/ova-pthread-stubs.o"
        mkdir -p "$SC_DIR"
        cp -f "$WASI_LIBC_DIR/crt1-command.o" "$WASI_LIBC_DIR/crt1-reactor.o" "$SC_DIR/"
        cp -f "$WASI_LIBC_DIR/libc.a" "$tmp/libc.a"
        llvm-ar-22 rs "$tmp/libc.a" "$tmp/ova-pthread-stubs.o"
        mv -f "$tmp/libc.a" "$SC_DIR/libc.a"
        stamp > "$SC_DIR/.ova-stamp"
        rm -rf "$tmp"
    fi
}

do_install() {
    case "$(route)" in
        rustup) log "using rustup's $TARGET target"; return 0 ;;
        debian) log "using Debian rustc-web ($($DEB_RUSTC --version))"; return 0 ;;
    esac
    if [ "${OVA_WASM_ROUTE:-}" != debian ] && command -v rustup >/dev/null 2>&1 \
        && timeout 60 rustup target add "$TARGET" >/dev/null 2>&1; then
        log "installed rustup's $TARGET target"
        return 0
    fi
    log "rustup cannot provide $TARGET here; using Debian's rustc-web route"
    install_debian
    deb_ready || die "Debian route set up but not ready"
    log "ready: $($DEB_RUSTC --version)"
}

run_cargo() {
    case "$(route)" in
        rustup)
            RUSTFLAGS="$GUEST_RUSTFLAGS" cargo "$@" --target "$TARGET" ;;
        debian)
            # Debian's tools by absolute path, with a clean environment: rustup's cargo (first
            # in PATH) and any outer cargo's variables must not leak in. RUSTC_BOOTSTRAP=1 lets
            # this stable compiler accept -Zbuild-std, on this call only.
            env -u RUSTUP_TOOLCHAIN -u RUSTC_WRAPPER -u RUSTC_WORKSPACE_WRAPPER \
                -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_TARGET -u CARGO \
                RUSTC="$DEB_RUSTC" RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 \
                RUSTFLAGS="$GUEST_RUSTFLAGS" \
                "$DEB_CARGO" "$@" -Zbuild-std=std,panic_abort --target "$TARGET" ;;
        *) die "no wasm toolchain: run scripts/wasm-toolchain.sh install" ;;
    esac
}

cmd=${1:-install}
[ $# -gt 0 ] && shift
case "$cmd" in
    check) r=$(route); echo "$r"; [ "$r" != none ] ;;
    install) do_install ;;
    cargo) run_cargo "$@" ;;
    *) die "unknown command $cmd (check|install|cargo)" ;;
esac
