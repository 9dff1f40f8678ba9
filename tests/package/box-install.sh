#!/bin/bash
# End-to-end test of the .deb in a real systemd (tests/box/box.sh: systemd as
# PID 1 of a private namespace over an overlay of /, nothing installed on the
# host). It installs the package with apt, checks that installing created the
# user and enabled/started nothing, points spawner and workers at the box's
# Redis through the documented drop-ins, runs `systemctl enable --now
# peagen-spawnerd`, pushes tasks with peagenctl, waits for worker units and
# results, reads structured fields with `journalctl -o json`, scrapes the
# metrics against the contract, then `apt-get remove`s the package and checks
# that no peagen unit is left running.
#
#   tests/package/box-install.sh [PKG]   (.deb, default newest dist/peagen-fabric_*.deb,
#                                          or .rpm: `rpm -i --nodeps`, the box is Debian)
# Env: KEEP_BOX=1 (leave the box's directory, a fresh `mktemp -d` under
# /var/tmp, for inspection).
set -euo pipefail
cd "$(dirname "$0")/../.."
top=$PWD
[ "$(id -u)" = 0 ] || { echo "box-install: needs root" >&2; exit 1; }
DEB=${1:-$(ls -t dist/peagen-fabric_*.deb 2>/dev/null | head -n1)}
[ -n "$DEB" ] && [ -f "$DEB" ] || { echo "box-install: no package (run make deb)" >&2; exit 1; }
case "$DEB" in *.rpm) kind=rpm ;; *.deb) kind=deb ;; *) echo "box-install: $DEB: not .deb/.rpm" >&2; exit 1 ;; esac
BOX=tests/box/box.sh
N=${TASKS:-6}
fail=0
step() { printf '\n== %s\n' "$*"; }
ok() { echo "box-install: ok: $*"; }
err() { echo "box-install: FAIL: $*" >&2; fail=1; }
in_box() { (cd / && "$top/$BOX" exec "$B" "$@"); }
# A fresh scratch directory per run (never under /tmp: the box gets its own).
B=$(mktemp -d /var/tmp/peagen-pkg-box.XXXXXX)
# box.sh waits for every process it started before removing anything; what it
# cannot clean up is a warning on stderr, not a failure of a green run.
cleanup() {
    cd "$top"
    if [ "${KEEP_BOX:-}" = 1 ]; then
        "$BOX" stop "$B" || true
        echo "box kept in $B"
        return
    fi
    "$BOX" rm "$B" || echo "box-install: warning: cleaning up $B failed (see above)" >&2
}
trap cleanup EXIT

step "boot a systemd box in $B"
"$BOX" start "$B" >/dev/null
port=$(cat "$B/redis.port")
echo "box up: systemd pid $(cat "$B/pid"), redis on port $port"
url="redis://127.0.0.1:$port"

step "install $(basename "$DEB")"
"$BOX" install "$B" "$DEB" /root/pkg/"$(basename "$DEB")"
# This image ships /usr/sbin/policy-rc.d (exit 101: "no service actions", as
# in containers); a real host has none, and it would also suppress the stops
# in prerm. Remove it inside the box only (the box is an overlay).
in_box rm -f /usr/sbin/policy-rc.d
# (apt-get --no-download breaks local .deb installs: "Pathname to install is
# not absolute"; nothing is downloaded anyway when the dependencies are there)
if [ $kind = deb ]; then
    in_box sh -c 'cd /root/pkg && DEBIAN_FRONTEND=noninteractive apt-get install -y "./$1"' \
        apt "$(basename "$DEB")" 2>&1 | tail -n 5
else
    # The box is Debian: its RPM database is empty, so dependencies cannot
    # resolve (--nodeps); the scriptlets run for real against the box's systemd.
    in_box rpm -i --nodeps /root/pkg/"$(basename "$DEB")"
fi
in_box getent passwd peagen >/dev/null && ok "user peagen created" || err "user peagen missing"
in_box test -d /var/lib/peagen && ok "/var/lib/peagen created" || err "/var/lib/peagen missing"
st=$(in_box systemctl is-enabled peagen-spawnerd.service 2>&1 || true)
[ "$st" = disabled ] && ok "not enabled by installing ($st)" || err "is-enabled after install: $st"
st=$(in_box systemctl is-active peagen-spawnerd.service 2>&1 || true)
[ "$st" = inactive ] && ok "not started by installing ($st)" || err "is-active after install: $st"
in_box systemd-analyze verify peagen-spawnerd.service peagen-workers.slice > "$B/verify.log" 2>&1 || true
[ ! -s "$B/verify.log" ] && ok "systemd-analyze verify clean on the installed units" \
    || { cat "$B/verify.log"; err "systemd-analyze verify output on installed units"; }

step "point spawner and workers at the box's Redis ($url) with drop-ins"
printf 'PEAGEN_REDIS_URL=%s\n' "$url" > "$B/redis.env"
printf '[Service]\nEnvironmentFile=/etc/peagen/redis.env\n' > "$B/dropin.conf"
"$BOX" install "$B" "$B/redis.env" /etc/peagen/redis.env
in_box chmod 0600 /etc/peagen/redis.env
"$BOX" install "$B" "$B/dropin.conf" /etc/systemd/system/peagen-spawnerd.service.d/50-redis.conf
"$BOX" install "$B" "$B/dropin.conf" /etc/systemd/system/peagen-worker@.service.d/50-redis.conf
in_box systemctl daemon-reload

step "systemctl enable --now peagen-spawnerd"
if in_box timeout 120 systemctl enable --now peagen-spawnerd; then
    ok "spawner active: $(in_box systemctl show -p ActiveState,SubState,MainPID,User peagen-spawnerd | tr '\n' ' ')"
else
    err "enable --now failed"
    in_box systemctl status --no-pager -l peagen-spawnerd || true
    in_box journalctl -u peagen-spawnerd --no-pager -n 40 || true
    exit 1
fi

step "push $N echo tasks with peagenctl"
ids=$(in_box env PEAGEN_REDIS_URL="$url" peagenctl push --kind echo \
      --payload '{"hello":"box"}' --id box-echo --count "$N")
echo "$ids"
[ "$(printf '%s\n' "$ids" | grep -c .)" = "$N" ] && ok "$N task ids printed" || err "push printed: $ids"

step "workers start as transient units and record results"
seen_workers=0
for _ in $(seq 120); do
    w=$(in_box systemctl list-units --all --no-legend --plain 'peagen-worker@*' 2>/dev/null | grep -c 'peagen-worker@' || true)
    [ "$w" -gt "$seen_workers" ] && seen_workers=$w
    [ "$seen_workers" -gt 0 ] && break
    sleep 0.5
done
[ "$seen_workers" -gt 0 ] && ok "worker units seen: $seen_workers" || err "no peagen-worker@ unit appeared"
in_box systemctl list-units --all --no-pager 'peagen-worker@*' || true
got=0
for id in $ids; do
    if r=$(in_box env PEAGEN_REDIS_URL="$url" peagenctl --json task get "$id" --wait 60); then
        if printf '%s' "$r" | grep -q '"status": *"ok"'; then got=$((got + 1)); else echo "$id: $r"; fi
    else
        echo "$id: no result"
    fi
done
[ "$got" = "$N" ] && ok "results recorded for $got/$N tasks (status ok)" || err "only $got/$N ok results"
in_box env PEAGEN_REDIS_URL="$url" peagenctl task get "$(printf '%s\n' "$ids" | head -n1)" || true
in_box env PEAGEN_REDIS_URL="$url" peagenctl workers || true

step "journalctl -u peagen-spawnerd -o json: structured fields"
in_box journalctl -u peagen-spawnerd -o json --no-pager > "$B/spawner.json" || true
python3 - "$B/spawner.json" <<'PY' || fail=1
import json, sys
entries = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ours = [e for e in entries if e.get("SYSLOG_IDENTIFIER", "").startswith("peagen") or "WORKER_ID" in e]
with_worker = [e for e in ours if e.get("WORKER_ID")]
print(f"box-install: {len(entries)} journal entries, {len(ours)} from peagen-spawnerd, {len(with_worker)} with WORKER_ID")
for e in with_worker[:3]:
    print("   ", {k: e[k] for k in ("MESSAGE", "WORKER_ID", "UNIT", "PRIORITY") if k in e})
if not with_worker:
    print("box-install: FAIL: no journal entry of peagen-spawnerd carries a WORKER_ID field", file=sys.stderr)
    sys.exit(1)
print("box-install: ok: structured WORKER_ID fields in the spawner's journal")
PY
wid=$(in_box journalctl -u 'peagen-worker@*' -o json --no-pager 2>/dev/null | python3 -c '
import json,sys
for l in sys.stdin:
    e=json.loads(l)
    if e.get("TASK_ID") or e.get("PEAGEN_WORKER_ID"): print(e.get("PEAGEN_WORKER_ID",""), e.get("TASK_ID","")); break' || true)
[ -n "$wid" ] && ok "worker journal has PEAGEN_WORKER_ID/TASK_ID fields ($wid)" || err "no structured fields in worker journals"

step "metrics on 127.0.0.1:9465 against the metric contract"
if m=$(in_box python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:9465/metrics", timeout=5).read().decode())'); then
    names=$(printf '%s\n' "$m" | sed -n 's/^\(peagen_[a-z0-9_]*\).*/\1/p' | sed 's/_\(bucket\|sum\|count\|created\)$//' | sort -u)
    contract=$(grep -v '^#' packaging/prometheus/metric-names.txt | awk 'NF {print $2}' | sort -u)
    extra=$(comm -23 <(printf '%s\n' "$names") <(printf '%s\n' "$contract") || true)
    [ -z "$extra" ] && ok "every exported peagen_* metric is in the contract ($(printf '%s\n' "$names" | grep -c .) names)" \
        || err "metrics not in packaging/prometheus/metric-names.txt: $(echo $extra)"
    echo "    exported: $(echo $names)"
    # Always present (labelled families such as queue_pending_total{kind}
    # only appear while they have a series).
    for need in peagen_build_info peagen_workers_desired peagen_spawns_total peagen_spawner_breaker_open; do
        printf '%s\n' "$names" | grep -qx "$need" || err "spawner does not export $need"
    done
else
    err "no metrics endpoint"
fi

if [ $kind = deb ]; then
    step "upgrade (same payload repacked as a newer version) and rollback"
    rm -rf "$B/repack" && dpkg-deb -R "$DEB" "$B/repack"
    old_ver=$(dpkg-deb -f "$DEB" Version); new_ver="$old_ver+upgradetest1"
    sed -i "s/^Version: .*/Version: $new_ver/" "$B/repack/DEBIAN/control"
    dpkg-deb --root-owner-group -b "$B/repack" "$B/up.deb" > /dev/null
    "$BOX" install "$B" "$B/up.deb" /root/pkg/up.deb
    # An admin edit of the conffile must survive the upgrade.
    in_box sed -i 's/^#max = 32$/max = 8/' /etc/peagen/peagen.toml
    pid_before=$(in_box systemctl show -p MainPID --value peagen-spawnerd)
    workers_before=$(in_box systemctl list-units --no-legend --plain --state=active 'peagen-worker@*' | awk '{print $1}')
    in_box sh -c 'cd /root/pkg && DEBIAN_FRONTEND=noninteractive apt-get install -y -o Dpkg::Options::=--force-confold ./up.deb' 2>&1 | tail -n 2
    [ "$(in_box dpkg-query -W -f '${Version}' peagen-fabric)" = "$new_ver" ] && ok "upgraded to $new_ver" || err "upgrade did not install $new_ver"
    pid_after=$(in_box systemctl show -p MainPID --value peagen-spawnerd)
    [ "$(in_box systemctl is-enabled peagen-spawnerd)" = enabled ] && ok "still enabled after upgrade" || err "not enabled after upgrade"
    [ "$(in_box systemctl is-active peagen-spawnerd)" = active ] && [ "$pid_after" != "$pid_before" ] && [ "$pid_after" != 0 ] \
        && ok "spawner restarted by the upgrade (MainPID $pid_before -> $pid_after)" || err "spawner not restarted/active after upgrade ($pid_before -> $pid_after)"
    in_box grep -qx 'max = 8' /etc/peagen/peagen.toml && ok "admin edit of peagen.toml kept" || err "peagen.toml edit lost on upgrade"
    kept=0
    for w in $workers_before; do
        [ "$(in_box systemctl is-active "$w" 2>/dev/null)" = active ] && kept=$((kept + 1))
    done
    [ -z "$workers_before" ] || [ "$kept" -gt 0 ] && ok "running workers not restarted by the upgrade ($kept of $(echo $workers_before | wc -w) still active)" \
        || err "upgrade stopped the running workers"
    in_box sh -c 'cd /root/pkg && DEBIAN_FRONTEND=noninteractive apt-get install -y --allow-downgrades -o Dpkg::Options::=--force-confold "./$1"' \
        apt "$(basename "$DEB")" 2>&1 | tail -n 1
    [ "$(in_box dpkg-query -W -f '${Version}' peagen-fabric)" = "$old_ver" ] && ok "rolled back to $old_ver" || err "rollback failed"
    [ "$(in_box systemctl is-active peagen-spawnerd)" = active ] && ok "spawner active after rollback" || err "spawner not active after rollback"
fi

step "the proposed worker property set, as a transient unit over D-Bus, runs a real worker"
# Every property of units/peagen-worker-transient.reference.service goes
# through StartTransientUnit (systemd-run -p), as the spawner does; the Redis
# URL comes from the worker drop-in installed above, which proves drop-ins
# apply to transient instances. The spawner is stopped so this worker gets
# the tasks.
in_box systemctl stop peagen-spawnerd
in_box systemctl stop 'peagen-worker@*.service' || true
props=()
while IFS= read -r l; do props+=(-p "${l//%i/ref1}"); done < <(sed -n '/^\[Service\]/,$p' \
    units/peagen-worker-transient.reference.service | grep -E '^[A-Z][A-Za-z]+=' | grep -v '^ExecStart=')
if in_box timeout 60 systemd-run --unit=peagen-worker@ref1.service "${props[@]}" /usr/bin/peagen-worker; then
    in_box systemctl show -p PrivateUsers,RestrictAddressFamilies,RestrictNamespaces,DynamicUser,Delegate peagen-worker@ref1.service | tr '\n' ' '; echo
    ref_ids=$(in_box env PEAGEN_REDIS_URL="$url" peagenctl push --kind echo --payload '{"ref":1}' --id ref-echo --count 2)
    got=0
    for id in $ref_ids; do
        r=$(in_box env PEAGEN_REDIS_URL="$url" peagenctl --json task get "$id" --wait 60 || true)
        printf '%s' "$r" | grep -q '"worker_id": *"ref1"' && printf '%s' "$r" | grep -q '"status": *"ok"' && got=$((got + 1))
    done
    [ "$got" = 2 ] && ok "transient worker with the reference property set ran 2/2 tasks" \
        || { err "reference worker ran $got/2 tasks"; in_box journalctl -u peagen-worker@ref1 --no-pager -n 30 || true; }
else
    err "StartTransientUnit with the reference property set failed"
fi
in_box systemctl stop peagen-worker@ref1.service || true

step "remove the package"
if [ $kind = deb ]; then
    in_box env DEBIAN_FRONTEND=noninteractive apt-get remove -y peagen-fabric 2>&1 | tail -n 3
else
    in_box rpm -e --nodeps peagen-fabric
fi
# Services and scopes only: the implicit parent peagen.slice of
# peagen-workers.slice stays "active" while empty, as any slice does.
# (The prerm's stops are synchronous; the wait only bounds a straggler.)
for _ in $(seq 60); do
    left=$(in_box systemctl list-units --all --no-legend --plain 'peagen*' --type=service,scope --state=active,activating,deactivating,reloading 2>/dev/null || true)
    [ -z "$left" ] && break
    sleep 0.5
done
[ -z "$left" ] && ok "no peagen service left running after remove" || err "left running after remove: $left"
st=$(in_box systemctl is-active peagen-workers.slice 2>&1 || true)
[ "$st" != active ] && ok "peagen-workers.slice $st" || err "peagen-workers.slice still active"
st=$(in_box systemctl is-active peagen-spawnerd.service 2>&1 || true)
[ "$st" != active ] && ok "spawner $st" || err "spawner still active"
in_box test ! -e /usr/lib/systemd/system/peagen-spawnerd.service && ok "unit file removed" || err "unit file still installed"
if [ $kind = deb ]; then
    in_box test -e /etc/peagen/peagen.toml && ok "conffile kept until purge" || err "conffile gone on remove"
    in_box env DEBIAN_FRONTEND=noninteractive apt-get purge -y peagen-fabric > /dev/null 2>&1 || true
    in_box test ! -e /etc/peagen/peagen.toml && ok "purge removed the conffile" || err "conffile left after purge"
else
    in_box test ! -e /etc/peagen/peagen.toml && ok "unmodified %config file removed with the package" || err "peagen.toml left after rpm -e"
fi

[ "$fail" = 0 ] && printf '\nbox-install: OK\n' || printf '\nbox-install: FAILED\n'
exit "$fail"
