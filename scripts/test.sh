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
step "cargo test (unit + integration: real redis-server, systemd box, sandbox battery as root)"
cargo test
for s in scripts/test-sandbox-unprivileged.sh scripts/check-units.sh scripts/check-promtool.sh scripts/check-packages.sh; do
    step "$s"
    "./$s"
done
printf '\nall checks passed\n'
