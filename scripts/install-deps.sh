#!/bin/sh
# Everything the demo and the test suite need on Debian 12, idempotently.
# scripts/demo.sh and scripts/test.sh call it first; running it by hand is
# never required.
#
#   scripts/install-deps.sh
#
# 1. The Rust toolchain: cargo >= the `rust-version` of Cargo.toml must be on
#    PATH. It is not installed here (Debian's rustc is too old, and rustup is a
#    choice the operator makes): without it this prints how to get it and exits
#    69 (EX_UNAVAILABLE), before anything else happens.
# 2. Debian packages: only the missing ones are installed (apt-get, as root);
#    when all are present apt is not touched, so a re-run takes well under a
#    second.
set -eu
cd "$(dirname "$0")/.."

# ---- 1. Rust toolchain -------------------------------------------------------
need=$(sed -n 's/^rust-version *= *"\([0-9.]*\)".*/\1/p' Cargo.toml | head -n1)
have=$(cargo --version 2>/dev/null | awk '{print $2}' | sed 's/-.*//') || have=
rust_help() {
    cat >&2 <<EOF
  peagen-fabric needs Rust >= $need (rust-version in Cargo.toml). Debian 12's
  own rustc is 1.63, too old. Install the current stable toolchain with rustup
  (https://rustup.rs), as the user that runs the scripts (root):

      curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
      . "\$HOME/.cargo/env"

  then run the same command again. (No network to rustup's servers? Use a
  standalone installer: https://forge.rust-lang.org/infra/other-installation-methods.html)
EOF
}
if [ -z "$have" ] && command -v cargo >/dev/null; then
    echo "install-deps: \`cargo --version\` fails ($(command -v cargo)):" >&2
    cargo --version 2>&1 | sed 's/^/  /' >&2 || true
    rust_help
    exit 69
elif [ -z "$have" ]; then
    echo "install-deps: no Rust toolchain: \`cargo\` is not on PATH." >&2
    if [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
        echo "  A rustup toolchain is installed in ${HOME:-/root}/.cargo/bin but that is not on PATH:" >&2
        echo "  run \`. \"\$HOME/.cargo/env\"\` (or add it to PATH) and run the same command again." >&2
    else
        rust_help
    fi
    exit 69
fi
if ! printf '%s\n%s\n' "$need" "$have" | sort -V -C; then
    echo "install-deps: cargo $have on PATH ($(command -v cargo)) is older than $need." >&2
    rust_help
    exit 69
fi

# ---- 2. Debian packages ------------------------------------------------------
# redis: the queue (tests start private instances); dbus, systemd, polkitd,
# util-linux (unshare, nsenter, setpriv), procps, passwd: the systemd box and the
# unprivileged sandbox run; gcc, libc6-dev, make, pkgconf: building (cargo
# links with cc; one sandbox test compiles a setuid helper); python3: execute
# tasks; pypy3: warm mode with a second interpreter (tests/sandbox_warm.rs);
# python3-venv: the Python client's tests and the supply-chain tools'
# venv; bubblewrap: the sandbox benchmark's reference; prometheus: promtool and the
# real-Prometheus alert test (tests/prometheus.rs);
# debhelper, dpkg-dev, rpm, lintian: the package checks.
pkgs="redis-server redis-tools dbus systemd polkitd util-linux procps passwd iproute2
      gcc libc6-dev make pkgconf ca-certificates python3 pypy3 python3-venv bubblewrap jq bc curl
      prometheus debhelper dpkg-dev rpm lintian"
missing=
for p in $pkgs; do
    case "$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null)" in
        ii*) ;;
        *) missing="$missing $p" ;;
    esac
done
if [ -z "$missing" ]; then
    echo "install-deps: Rust $have (>= $need) and all Debian packages present"
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing Debian packages:$missing; run as root to install them" >&2
    exit 1
fi
echo "install-deps: installing$missing"
echo "install-deps: (apt-get update + install: about 1-3 minutes on a fresh machine)"
export DEBIAN_FRONTEND=noninteractive
# Wait for another apt run to finish instead of failing on its lock.
apt_lock="-o DPkg::Lock::Timeout=600"
# shellcheck disable=SC2086
apt-get $apt_lock update -qq
# shellcheck disable=SC2086
apt-get $apt_lock install -y -qq --no-install-recommends $missing >/dev/null
echo "install-deps: done"
# Debian starts redis-server on install when an init system is present; the
# tests and the demo run their own private instances, so none is needed here.
