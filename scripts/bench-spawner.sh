#!/bin/bash
# Benchmark: a burst into an empty queue (warm pool 0) -> worker start-up, with
# peagen-spawnerd driving a real systemd 252 in the test box (tests/box/box.sh),
# real D-Bus, real Redis, the real peagen-worker. Prints, per variant:
#   push -> first READY   Redis entry id of the first pushed task (the time
#                         Redis took it) -> ActiveEnterTimestamp of the first
#                         worker unit (median / p95 over rounds)
#   spawn -> READY        StartTransientUnit call -> JobRemoved seen by the
#                         spawner (its peagen_spawn_ready_seconds, per worker)
# and where the start-up time goes, per worker, on CLOCK_MONOTONIC (systemd's
# own unit timestamps read over D-Bus by systemctl; the spawner's and the
# worker's timestamps from their journal fields):
#   call->fork      StartTransientUnit call -> ExecMainStartTimestamp (D-Bus,
#                   transient unit load, job queue, DynamicUser allocation,
#                   fork; systemd sets InactiveExitTimestamp just after the fork)
#   fork->main      ExecMainStart -> the worker's main() (systemd's exec set-up
#                   in the child: namespaces, mounts, seccomp; then execve and
#                   the dynamic loader)
#   main->config, config->redis, redis->handlers, handlers->ready (ours)
#   ready->active   sd_notify(READY=1) -> ActiveEnterTimestamp (systemd)
#   active->seen    ActiveEnter -> the spawner sees JobRemoved
#   push->decide    first entry -> the spawner's first StartTransientUnit call
# Old binaries (without the worker's phase fields) show "-" for our phases.
#
#   scripts/bench-spawner.sh [ROUNDS] [TASKS...]   (root; builds if needed)
#   AFTER_BIN=DIR   binaries to measure (default: build target/release)
#   BEFORE_BIN=DIR  also run peagen-worker/peagen-spawnerd from DIR (e.g. a
#                   build of main) as the "before" column, in the same run
#                   (first; BEFORE_LAST=1: last).
#   VARIANTS="default nohard root"  unit variants (default: all of them):
#                   default  the built-in property set (hardening, DynamicUser)
#                   nohard   worker-unit.hardening = false (DynamicUser kept)
#                   root     hardening = false, dynamic-user = false
#                   nons     default plus a drop-in with every namespace
#                            property off (PrivateTmp/Devices/IPC/Mounts/
#                            Users, ProtectSystem/Home): systemd's share
#                   nosc     default plus a drop-in with every seccomp-based
#                            property off (SystemCallFilter/Architectures,
#                            RestrictAddressFamilies/Namespaces/Realtime/
#                            SUIDSGID, LockPersonality)
#                   nonsnosc both drop-ins
set -euo pipefail
ROUNDS=${1:-5}; shift || true
TASKS=("$@"); [ ${#TASKS[@]} -gt 0 ] || TASKS=(1 20)
here=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}
[ "$(id -u)" = 0 ] || { echo "bench-spawner: needs root (boots systemd in a private namespace)" >&2; exit 1; }
if [ -n "${AFTER_BIN:-}" ]; then bin=$AFTER_BIN; else
    (cd "$here" && cargo build --release --bins -q); bin=$CARGO_TARGET_DIR/release
fi
OUT=$(mktemp -d /var/tmp/peagen-bench.XXXXXX)   # raw data; never under /tmp
BOX=
box() { "$here/tests/box/box.sh" "$@"; }
cleanup() { [ -z "$BOX" ] || box rm "$BOX" || echo "bench-spawner: warning: cleaning up $BOX failed" >&2; }
trap cleanup EXIT
now_us() { date +%s%6N; }

# run LABEL BINDIR VARIANT: one box, ROUNDS rounds per burst size.
run() {
    local label=$1 bdir=$2 variant=$3 dir=$OUT/$1
    mkdir -p "$dir"
    BOX=$(mktemp -d /var/tmp/peagen-bench-box.XXXXXX)
    box start "$BOX" >/dev/null
    local port mport cfg extra=
    port=$(cat "$BOX/redis.port")
    mport=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
    case $variant in
        nohard) extra='hardening = false' ;;
        root) extra=$'hardening = false\ndynamic-user = false' ;;
    esac
    cfg=$BOX/peagen.toml
    cat > "$cfg" <<TOML
[redis]
url = "redis://127.0.0.1:$port"
[metrics]
spawner-listen = "127.0.0.1:$mport"
[spawner]
warm-pool = 0
max = 16
tasks-per-worker = 2
idle-timeout-secs = 1
scale-down-window-secs = 1
[spawner.worker-unit]
exec-start = ["/usr/local/bin/peagen-worker", "--config", "/etc/peagen/peagen.toml"]
$extra
[[handlers.command]]
kind = "sleep"
program = "/bin/sh"
args = ["-c", "sleep 1; cat"]
TOML
    local dropin=
    case $variant in
        nosc) dropin=$'[Service]\nSystemCallFilter=\nSystemCallArchitectures=\nRestrictAddressFamilies=\nRestrictNamespaces=no\nRestrictRealtime=no\nRestrictSUIDSGID=no\nLockPersonality=no\n' ;;
        nons) dropin=$'[Service]\nPrivateTmp=no\nPrivateDevices=no\nPrivateIPC=no\nPrivateMounts=no\nPrivateUsers=no\nProtectSystem=no\nProtectHome=no\n' ;;
        nonsnosc) dropin=$'[Service]\nPrivateTmp=no\nPrivateDevices=no\nPrivateIPC=no\nPrivateMounts=no\nPrivateUsers=no\nProtectSystem=no\nProtectHome=no\nSystemCallFilter=\nSystemCallArchitectures=\nRestrictAddressFamilies=\nRestrictNamespaces=no\nRestrictRealtime=no\nRestrictSUIDSGID=no\nLockPersonality=no\n' ;;
    esac
    if [ -n "$dropin" ]; then
        printf '%s' "$dropin" > "$dir/dropin.conf"
        box install "$BOX" "$dir/dropin.conf" /etc/systemd/system/peagen-worker@.service.d/50-bench.conf
        box exec "$BOX" systemctl daemon-reload
    fi
    for b in peagen-worker peagen-spawnerd; do box install "$BOX" "$bdir/$b" "/usr/local/bin/$b"; done
    box install "$BOX" "$cfg" /etc/peagen/peagen.toml
    box exec "$BOX" systemd-run -q --unit=peagen-spawnerd -p Type=notify /usr/local/bin/peagen-spawnerd --config /etc/peagen/peagen.toml
    ctl() { "$bin/peagenctl" --config "$cfg" "$@"; }
    live() { box exec "$BOX" systemctl list-units --plain --no-legend 'peagen-worker@*' | grep -c . || true; }
    local results0=0 r n first_id st done_n len
    for n in "${TASKS[@]}"; do
        for r in $(seq "$ROUNDS"); do
            for _ in $(seq 300); do [ "$(live)" = 0 ] && break; sleep 0.1; done
            first_id=$(ctl push -k sleep --count "$n" --json | head -1 | jq -r .entry_id)
            echo "push $n $r $first_id" >> "$dir/pushes"
            while :; do
                # Unit timestamps while the units are loaded (they are
                # collected when they finish).
                box exec "$BOX" systemctl show -p Id -p InactiveExitTimestampMonotonic \
                    -p ExecMainStartTimestampMonotonic -p ActiveEnterTimestampMonotonic \
                    -p ActiveEnterTimestamp --timestamp=us+utc 'peagen-worker@*' >> "$dir/units" 2>/dev/null || true
                echo >> "$dir/units"
                st=$(ctl queue stats --json)
                done_n=$(echo "$st" | jq .results); len=$(echo "$st" | jq .length)
                if [ "$done_n" -ge $((results0 + n)) ] && [ "$len" = 0 ]; then break; fi
                sleep 0.05
            done
            results0=$((results0 + n))
        done
    done
    box exec "$BOX" journalctl -o json --no-pager SYSLOG_IDENTIFIER=peagen-spawnerd > "$dir/spawner.json"
    box exec "$BOX" journalctl -o json --no-pager SYSLOG_IDENTIFIER=peagen-worker > "$dir/worker.json"
    box rm "$BOX"; BOX=
}

variants=${VARIANTS:-default nohard root nons nosc nonsnosc}
labels=()
# BEFORE_LAST=1: the before column runs last (load drifts during a run; run
# both orders to see that the difference is not the order).
if [ -n "${BEFORE_BIN:-}" ] && [ -z "${BEFORE_LAST:-}" ]; then run before "$BEFORE_BIN" default; labels+=(before); fi
for v in $variants; do run "$v" "$bin" "$v"; labels+=("$v"); done
if [ -n "${BEFORE_BIN:-}" ] && [ -n "${BEFORE_LAST:-}" ]; then run before "$BEFORE_BIN" default; labels+=(before); fi
python3 - "$OUT" "${labels[@]}" <<'PY'
import json, sys, datetime, statistics as st
out, labels = sys.argv[1], sys.argv[2:]

def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))] if xs else None

def journal(path):
    rows = []
    for line in open(path):
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows

def load(label):
    d = f"{out}/{label}"
    units = {}
    for block in open(f"{d}/units").read().split("\n\n"):
        kv = dict(l.split("=", 1) for l in block.splitlines() if "=" in l)
        if not kv.get("Id"):
            continue
        u = units.setdefault(kv["Id"], {})
        for k, v in kv.items():
            if v and v != "0" and k not in u:
                u[k] = v
    pushes = [l.split() for l in open(f"{d}/pushes")]
    sp = journal(f"{d}/spawner.json")
    wk = journal(f"{d}/worker.json")
    ready_ms, call_mono, decide_mono = {}, {}, []
    for e in sp:
        wid = e.get("WORKER_ID")
        if e.get("MESSAGE") == "worker ready" and wid:
            ready_ms[wid] = float(e["READY_MS"])
            if "CALL_MONO_US" in e:
                call_mono[wid] = int(e["CALL_MONO_US"])
        if e.get("MESSAGE") == "starting worker" and "MONO_US" in e:
            decide_mono.append(int(e["MONO_US"]))
    phases = {}
    for e in wk:
        if e.get("MESSAGE") == "worker start-up" and e.get("WORKER_ID"):
            phases[e["WORKER_ID"]] = {k: int(e[k]) for k in
                ("MAIN_MONO_US", "CONFIG_MONO_US", "REDIS_MONO_US", "HANDLERS_MONO_US", "READY_MONO_US") if k in e}
    return units, pushes, ready_ms, call_mono, decide_mono, phases

def realtime_us(s):  # "Tue 2026-12-01 19:01:02.123456 UTC"
    p = s.split()
    t = datetime.datetime.strptime(p[1] + " " + p[2], "%Y-%m-%d %H:%M:%S.%f")
    return int(t.replace(tzinfo=datetime.timezone.utc).timestamp() * 1e6)

PH = ["call->fork", "fork->main", "main->config", "config->redis",
      "redis->handlers", "handlers->ready", "ready->active", "active->seen", "push->decide"]
res = {}
for label in labels:
    units, pushes, ready_ms, call_mono, decide_mono, phases = load(label)
    by_wid = {}
    offset = None  # realtime - monotonic, from systemd's own pair
    for uid, u in units.items():
        wid = uid[len("peagen-worker@"):-len(".service")]
        if "ActiveEnterTimestamp" in u and "ActiveEnterTimestampMonotonic" in u:
            rt = realtime_us(u["ActiveEnterTimestamp"])
            offset = offset or rt - int(u["ActiveEnterTimestampMonotonic"])
            by_wid[wid] = (rt, u)
    ph = {k: [] for k in PH}
    for wid, (rt, u) in by_wid.items():
        ie = int(u.get("InactiveExitTimestampMonotonic", 0)); ms = int(u.get("ExecMainStartTimestampMonotonic", 0))
        ae = int(u.get("ActiveEnterTimestampMonotonic", 0))
        if wid in call_mono and ms:
            ph["call->fork"].append(ms - call_mono[wid])
        w = phases.get(wid)
        if w and ms:
            ph["fork->main"].append(w["MAIN_MONO_US"] - ms)
            ph["main->config"].append(w["CONFIG_MONO_US"] - w["MAIN_MONO_US"])
            ph["config->redis"].append(w["REDIS_MONO_US"] - w["CONFIG_MONO_US"])
            ph["redis->handlers"].append(w["HANDLERS_MONO_US"] - w["REDIS_MONO_US"])
            ph["handlers->ready"].append(w["READY_MONO_US"] - w["HANDLERS_MONO_US"])
            ph["ready->active"].append(ae - w["READY_MONO_US"])
        if wid in call_mono and wid in ready_ms and ae:
            ph["active->seen"].append(call_mono[wid] + ready_ms[wid] * 1000 - ae)
    firsts = {}
    for _, n, r, eid in pushes:
        push_rt = int(eid.split("-")[0]) * 1000
        later = sorted(rt for rt, _ in by_wid.values() if rt >= push_rt)
        if later:
            firsts.setdefault(int(n), []).append(later[0] - push_rt)
        if offset:
            dm = sorted(m for m in decide_mono if m + offset >= push_rt)
            if dm:
                ph["push->decide"].append(dm[0] + offset - push_rt)
    res[label] = (firsts, sorted(ready_ms.values()), ph)

def f(x, scale=1.0):
    return "-" if x is None else f"{x / scale:.1f}"

print(f"\nworker start-up, {len(labels)} variants (raw data: {out})\n")
print(f"{'':28}" + "".join(f"{l:>16}" for l in labels))
sizes = sorted({n for l in labels for n in res[l][0]})
for n in sizes:
    for name, p in (("median", 50), ("p95", 95)):
        print(f"{'push->first READY ' + str(n) + ' ' + name:28}" +
              "".join(f"{f(pct(res[l][0].get(n, []), p), 1000) + ' ms':>16}" for l in labels))
for name, p in (("median", 50), ("p95", 95)):
    print(f"{'spawn->READY ' + name:28}" + "".join(f"{f(pct(res[l][1], p)) + ' ms':>16}" for l in labels))
print(f"{'(workers)':28}" + "".join(f"{len(res[l][1]):>16}" for l in labels))
print("\nper phase, median (p95) in ms, CLOCK_MONOTONIC")
for k in PH:
    print(f"{k:28}" + "".join(
        f"{(f(pct(res[l][2][k], 50), 1000) + ' (' + f(pct(res[l][2][k], 95), 1000) + ')'):>16}" for l in labels))
print("\ntargets: spawn->READY median <= 60 ms, push->first READY <= 50 ms")
PY
