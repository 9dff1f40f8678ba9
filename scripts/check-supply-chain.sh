#!/bin/sh
# Supply-chain checks (issue 14), offline:
#   1. cargo audit: Cargo.lock against the RustSec advisory-db snapshot.
#      A known vulnerability fails; unmaintained/unsound/yanked are printed as
#      warnings and do not fail.
#   2. cargo deny: license allow-list, bans, sources (deny.toml).
# With --packages (after `make packages`), instead checks dist/: the .deb and
# the .rpm ship the CycloneDX SBOM, each packaged binary still carries its
# cargo-auditable dependency list (after stripping), which matches Cargo.lock
# and the SBOM, and `cargo audit bin` passes on it.
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
mode=${1:-}
case "$mode" in ""|--packages) ;; *) die "usage: $0 [--packages]" ;; esac
[ -d "$db/crates" ] || die "no RustSec advisory database at $db (want $db/crates/): set PEAGEN_ADVISORY_DB to a checkout of the advisory-db"

# The snapshot has no git history here: its newest advisory date tells how
# current the check is.
newest=$(grep -rhoE '^date = "[0-9]{4}-[0-9]{2}-[0-9]{2}"' --include='*.md' "$db/crates" "$db/rust" 2>/dev/null \
    | sort | tail -n1 | cut -d'"' -f2)
count=$(find "$db/crates" "$db/rust" -name '*.md' 2>/dev/null | wc -l)
say "advisory database $db: $count advisories, newest dated ${newest:-unknown}"
say "(vulnerabilities published after ${newest:-that date} are NOT checked; see docs/security.md to refresh)"

fail=0

if [ "$mode" = --packages ]; then
    version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
    deb=$(ls dist/peagen-fabric_"$version"_*.deb 2>/dev/null | head -n1)
    rpm=$(ls dist/peagen-fabric-"$version"-*.rpm 2>/dev/null | head -n1)
    [ -n "$deb" ] && [ -n "$rpm" ] || die "no .deb/.rpm of $version in dist/: run make packages"
    sbom=usr/share/doc/peagen-fabric/peagen-fabric.cdx.json
    tmp=$(mktemp -d "${TMPDIR:-/var/tmp}/peagen-supply.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT INT TERM
    mkdir -p "$tmp/deb" "$tmp/rpm"
    dpkg-deb -x "$deb" "$tmp/deb"
    rpm2archive - < "$rpm" | tar -xzf - -C "$tmp/rpm"
    # Crates for the host target from Cargo.lock, as "name version" lines.
    cargo metadata --format-version 1 --locked --offline --filter-platform "$(rustc -vV | sed -n 's/^host: //p')" \
        > "$tmp/metadata.json" 2>/dev/null \
        || cargo metadata --format-version 1 --locked --filter-platform "$(rustc -vV | sed -n 's/^host: //p')" > "$tmp/metadata.json"
    for pkg in deb rpm; do
        root=$tmp/$pkg
        if [ -s "$root/$sbom" ] && jq -e '.bomFormat == "CycloneDX" and (.components | length) > 0' "$root/$sbom" >/dev/null; then
            say "$pkg: /$sbom ($(jq '.components | length' "$root/$sbom") components)"
        else
            say "$pkg: FAILED: no valid CycloneDX SBOM at /$sbom"; fail=1; continue
        fi
        for b in peagen-spawnerd peagen-worker peagenctl; do
            bin=$root/usr/bin/$b
            if ! objcopy --dump-section .dep-v0="$tmp/$pkg-$b.dep" "$bin" /dev/null 2>/dev/null; then
                say "$pkg: FAILED: /usr/bin/$b has no .dep-v0 section (not built with cargo auditable, or stripped)"
                fail=1; continue
            fi
            # Every crate embedded in the binary must be in Cargo.lock and in the SBOM.
            if out=$(python3 - "$tmp/$pkg-$b.dep" "$tmp/metadata.json" "$root/$sbom" <<'PY'
import json, sys, zlib
dep = json.loads(zlib.decompress(open(sys.argv[1], "rb").read()))
emb = {(p["name"], p["version"]) for p in dep["packages"] if p.get("source") != "local"}
meta = json.load(open(sys.argv[2]))
lock = {(p["name"], p["version"]) for p in meta["packages"]}
bom = json.load(open(sys.argv[3]))
sbom = {(c["name"], c["version"]) for c in bom.get("components", [])}
bad = [f"{n} {v}: not in Cargo.lock" for n, v in sorted(emb - lock)]
bad += [f"{n} {v}: not in the SBOM" for n, v in sorted(emb - sbom)]
if not emb:
    bad.append("empty dependency list")
print(f"{len(emb)} crates embedded" if not bad else "; ".join(bad))
sys.exit(1 if bad else 0)
PY
            ); then
                say "$pkg: /usr/bin/$b: $out, all in Cargo.lock and the SBOM"
            else
                say "$pkg: FAILED: /usr/bin/$b: $out"; fail=1
            fi
        done
    done
    say "cargo audit --db $db --no-fetch --stale bin (packaged binaries)"
    if cargo audit --db "$db" --no-fetch --stale bin "$tmp"/deb/usr/bin/peagen* "$tmp"/rpm/usr/bin/peagen*; then
        say "audit bin: no known vulnerability in the packaged binaries"
    else
        say "audit bin: FAILED"; fail=1
    fi
    [ "$fail" -eq 0 ] || { say "FAILED"; exit 1; }
    say "ok (packages)"
    exit 0
fi

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
