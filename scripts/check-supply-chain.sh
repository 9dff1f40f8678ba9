#!/bin/sh
# Supply-chain checks (issue 14), offline:
#   1. cargo audit: Cargo.lock against the RustSec advisory-db snapshot.
#      A known vulnerability fails; unmaintained/unsound/yanked are printed as
#      warnings and do not fail.
#   2. cargo deny: license allow-list, bans, sources (deny.toml).
# Env: PEAGEN_ADVISORY_DB  advisory-db directory (default ../shared/advisory-db,
#      relative to the repository root: in CI the clone sits beside shared/).
# Tools: scripts/install-supply-chain-tools.sh
set -eu
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}

say() { echo "check-supply-chain: $*"; }
die() { echo "check-supply-chain: $*" >&2; exit 2; }

for t in cargo-audit cargo-deny; do
    # cargo finds subcommands in $CARGO_HOME/bin even when it is not on PATH.
    cargo "${t#cargo-}" --version >/dev/null 2>&1 \
        || die "$t missing: run scripts/install-supply-chain-tools.sh"
done

db=${PEAGEN_ADVISORY_DB:-../shared/advisory-db}
[ -d "$db/crates" ] || die "no RustSec advisory database at $db (want $db/crates/): set PEAGEN_ADVISORY_DB to a checkout of the advisory-db"

# The snapshot has no git history here: its newest advisory date tells how
# current the check is.
newest=$(grep -rhoE '^date = "[0-9]{4}-[0-9]{2}-[0-9]{2}"' --include='*.md' "$db/crates" "$db/rust" 2>/dev/null \
    | sort | tail -n1 | cut -d'"' -f2)
count=$(find "$db/crates" "$db/rust" -name '*.md' 2>/dev/null | wc -l)
say "advisory database $db: $count advisories, newest dated ${newest:-unknown}"
say "(vulnerabilities published after ${newest:-that date} are NOT checked; see docs/security.md to refresh)"

fail=0

say "cargo audit --db $db --no-fetch --stale"
if cargo audit --db "$db" --no-fetch --stale; then
    say "audit: no known vulnerability in Cargo.lock"
else
    say "audit: FAILED (vulnerable crate versions above: update them, see docs/security.md)"
    fail=1
fi

# cargo-deny reads `cargo metadata`, which needs every crate of the graph in
# the local registry: fetch the Linux ones if some are missing (first run on a
# fresh machine only; a no-op otherwise).
cargo fetch --locked --offline --target x86_64-unknown-linux-gnu >/dev/null 2>&1 \
    || cargo fetch --locked --target x86_64-unknown-linux-gnu

say "cargo deny --offline check licenses bans sources"
if cargo deny --offline check licenses bans sources; then
    say "deny: licenses, bans and sources ok"
else
    say "deny: FAILED (see deny.toml for the policy)"
    fail=1
fi

[ "$fail" -eq 0 ] || { say "FAILED"; exit 1; }
say "ok"
