#!/usr/bin/env bash
# Installs what the test suite needs besides Rust and the wasm toolchain. Idempotent.
set -euo pipefail
need=()
command -v ip >/dev/null 2>&1 || need+=(iproute2)
# worker/tests/observability.rs: a real Prometheus scrapes a test network (the test starts
# it on 127.0.0.1; promtool checks examples/monitoring/prometheus.yml), and headless
# Chromium renders the status page.
[ -x /usr/bin/prometheus ] && [ -x /usr/bin/promtool ] || need+=(prometheus)
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "missing packages (need root to install): ${need[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Installing must not start services (Debian's prometheus package would start one
    # listening on every address): deny starts unless a policy is already in place.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi
for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
done
