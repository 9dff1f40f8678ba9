#!/bin/sh
# The whole test suite: formatting, lints, unit and integration tests
# (real redis-server, real systemd in a box, sandbox battery as root and
# unprivileged), unit and package checks, alert rule tests.
set -eu
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }
step "cargo fmt --check"
cargo fmt --check
step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
step "cargo test"
cargo test --all-targets
for s in scripts/test-sandbox-unprivileged.sh scripts/check-units.sh scripts/check-promtool.sh scripts/check-packages.sh; do
    if [ -x "$s" ]; then
        step "$s"
        "$s"
    fi
done
printf '\nall checks passed\n'
