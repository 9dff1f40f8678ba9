#!/bin/sh
# CI gate for the shipped systemd units (needs systemd-analyze, no running systemd).
#  - `systemd-analyze verify` on every unit, with the example drop-ins applied:
#    any output is a failure (verify exits 0 on unknown keys).
#  - `systemd-analyze security --offline=true` exposure gates:
#    peagen-spawnerd.service <= 2.0, the worker transient property set <= 3.0:
#    both the proposal units/peagen-worker-transient.reference.service and
#    what the spawner really sends (systemd::render_worker_unit, rendered by
#    tests/package_units.rs).
#  - every Documentation=man: page is shipped in packaging/man/.
# verify needs the ExecStart= binaries: they are staged with the host's unit
# files into a scratch root used with --root=, nothing is installed on the host.
# Binaries come from $PEAGEN_BIN_DIR, else ${CARGO_TARGET_DIR:-target}/release
# (built with cargo if missing).
set -eu
cd "$(dirname "$0")/.."
SPAWNER_MAX=${SPAWNER_MAX:-2.0}
WORKER_MAX=${WORKER_MAX:-3.0}
BIN_DIR=${PEAGEN_BIN_DIR:-${CARGO_TARGET_DIR:-target}/release}
BINS="peagen-spawnerd peagen-worker peagenctl"
fail=0
err() { echo "check-units: FAIL: $*" >&2; fail=1; }

for b in $BINS; do
    if [ ! -x "$BIN_DIR/$b" ]; then
        echo "check-units: building release binaries into $BIN_DIR"
        cargo build --release --locked --bins
        break
    fi
done

root=$(mktemp -d "${TMPDIR:-/var/tmp}/peagen-units.XXXXXX")
trap 'rm -rf "$root"' EXIT INT TERM
unitdir=$root/usr/lib/systemd/system
mkdir -p "$unitdir" "$root/usr/bin" "$root/etc/systemd/system"
ln -s usr/lib "$root/lib"; ln -s usr/bin "$root/bin"; ln -s usr/sbin "$root/sbin"
# The host's units (targets, dbus.socket, ...) so dependencies resolve.
cp -a /usr/lib/systemd/system/. "$unitdir/"
cp /usr/bin/kill "$root/usr/bin/kill"
for b in $BINS; do cp "$BIN_DIR/$b" "$root/usr/bin/$b"; done
cp units/peagen-spawnerd.service units/peagen-workers.slice "$unitdir/"
# A worker instance unit stands in for the transient property set.
cp units/peagen-worker-transient.reference.service "$unitdir/peagen-worker@reference.service"
# The shipped example drop-ins must be valid too.
mkdir -p "$root/etc/systemd/system/peagen-worker@.service.d" \
         "$root/etc/systemd/system/peagen-workers.slice.d" \
         "$root/etc/systemd/system/peagen-spawnerd.service.d" "$root/etc/peagen"
cp packaging/examples/10-memory.conf "$root/etc/systemd/system/peagen-worker@.service.d/"
cp packaging/examples/peagen-workers-slice.conf "$root/etc/systemd/system/peagen-workers.slice.d/10-size.conf"
cp packaging/examples/20-remote-redis.conf "$root/etc/systemd/system/peagen-spawnerd.service.d/"
: > "$root/etc/peagen/redis.env"

# The spawner's own rendering of the worker property set
# (systemd::render_worker_unit with the default config), printed by
# examples/render_worker_unit.rs.
rendered=$root/rendered
if ! cargo run --quiet --locked --example render_worker_unit > "$rendered" 2> "$root/render.log" \
        || [ ! -s "$rendered" ]; then
    cat "$root/render.log" >&2
    err "could not render the worker unit with render_worker_unit"
    rendered=
else
    cp "$rendered" "$unitdir/peagen-worker@rendered.service"
fi

units="peagen-spawnerd.service peagen-workers.slice peagen-worker@reference.service"
[ -n "$rendered" ] && units="$units peagen-worker@rendered.service"
out=$(systemd-analyze verify --man=no --root="$root" $units 2>&1) || err "systemd-analyze verify exited non-zero"
if [ -n "$out" ]; then
    printf '%s\n' "$out" >&2
    err "systemd-analyze verify printed output (treated as failure)"
else
    echo "check-units: verify: clean ($units)"
fi

score() { # unit-file max
    s=$(systemd-analyze security --offline=true "$1" 2>&1 | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    [ -n "$s" ] || { err "no exposure score for $1"; return; }
    t=$(echo "$2" | awk '{printf "%d", $1 * 10 + 0.5}')
    if systemd-analyze security --offline=true --threshold="$t" "$1" > /dev/null 2>&1; then
        echo "check-units: exposure $(basename "$1"): $s (max $2) ok"
    else
        err "exposure of $(basename "$1") is $s, above $2"
    fi
}
score units/peagen-spawnerd.service "$SPAWNER_MAX"
score units/peagen-worker-transient.reference.service "$WORKER_MAX"
if [ -n "$rendered" ]; then
    cp "$rendered" "$root/peagen-worker-rendered.service"
    score "$root/peagen-worker-rendered.service" "$WORKER_MAX"
    # Report where the spawner's rendering and the reference differ.
    keys() { grep -E '^[A-Za-z]+=' "$1" | grep -vE '^(Description|Documentation|ExecStart|Environment)=' | sort -u; }
    keys units/peagen-worker-transient.reference.service > "$root/ref.keys"
    keys "$rendered" > "$root/ren.keys"
    if ! diff -u "$root/ref.keys" "$root/ren.keys" > "$root/keys.diff"; then
        echo "check-units: note: rendered worker properties differ from the reference:"
        sed 's/^/    /' "$root/keys.diff"
    fi
fi

# Documentation=man:NAME(SECTION) must be shipped.
for u in units/*.service units/*.slice; do
    for m in $(sed -n 's/^Documentation=//p' "$u" | tr ' ' '\n' | sed -n 's/^man:\(.*\)(\(.*\))$/\1.\2/p'); do
        [ -f "packaging/man/$m" ] || err "$u refers to man:$m, not in packaging/man/"
    done
done
# A template file would block the transient workers.
[ ! -e units/peagen-worker@.service ] || err "units/peagen-worker@.service must not exist (blocks transient units)"

[ "$fail" -eq 0 ] && echo "check-units: OK"
exit "$fail"
