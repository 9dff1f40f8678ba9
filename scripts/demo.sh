#!/bin/bash
# The main job, end to end: peagen-spawnerd scales transient
# peagen-worker@<uuid>.service units on a real systemd from a Redis queue.
#
#   scripts/demo.sh            (root)
#
# Uses the host's systemd when PID 1 is systemd, otherwise boots one in a
# private PID+mount namespace (tests/box/box.sh; never on the host's root).
# Uses $PEAGEN_REDIS_URL when set, otherwise starts a private redis-server.
# Env: DEMO_TASKS (default 24), DEMO_KIND (default "execute": Peagen-style
# {child_src, entry_fn} Python candidates run in the sandbox, one of them
# hostile; "work": a command handler that sleeps 2 s and echoes its payload),
# CARGO_TARGET_DIR, DEMO_PROFILE (debug|release, default debug).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}
TASKS=${DEMO_TASKS:-24}; KIND=${DEMO_KIND:-execute}; PROFILE=${DEMO_PROFILE:-debug}
[ "$(id -u)" = 0 ] || { echo "demo: run as root (it starts system units)" >&2; exit 1; }
for t in redis-server curl jq; do command -v $t >/dev/null || { echo "demo: needs $t" >&2; exit 1; }; done

echo "==> building ($PROFILE)"
(cd "$here" && if [ "$PROFILE" = release ]; then cargo build -q --release --bins; else cargo build -q --bins; fi)
bin=$CARGO_TARGET_DIR/$PROFILE
work=/var/tmp/peagen-demo.$$; mkdir -p "$work"
mport=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')

if [ "$(cat /proc/1/comm)" = systemd ]; then
    mode=host
    run_in() { "$@"; }
    install_file() { install -D -m "$(stat -c %a "$1")" "$1" "$2"; }
    prefix=/run/peagen-demo
else
    mode=box
    run_in() { "$here/tests/box/box.sh" exec "$work/box" "$@"; }
    install_file() { "$here/tests/box/box.sh" install "$work/box" "$1" "$2"; }
    prefix=/run/peagen-demo
fi

redis_pid=
cleanup() {
    echo "==> cleaning up"
    run_in systemctl stop peagen-spawnerd.service 2>/dev/null || true
    run_in sh -c "systemctl stop 'peagen-worker@*.service'; systemctl reset-failed 'peagen-worker@*.service'" 2>/dev/null || true
    if [ $mode = box ]; then "$here/tests/box/box.sh" stop "$work/box" >/dev/null 2>&1 || true; fi
    if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; fi
    if [ $mode = host ]; then rm -rf "$prefix"; fi
    rm -rf "$work"
}
trap cleanup EXIT

if [ $mode = box ]; then
    echo "==> PID 1 is not systemd: booting systemd $(systemctl --version | awk 'NR==1{print $2}') in a private namespace"
    if [ -n "${PEAGEN_REDIS_URL:-}" ]; then BOX_NO_REDIS=1 "$here/tests/box/box.sh" start "$work/box"
    else "$here/tests/box/box.sh" start "$work/box"; redis_pid=$(cat "$work/box/redis.pid"); fi
    url=${PEAGEN_REDIS_URL:-redis://127.0.0.1:$(cat "$work/box/redis.port")}
else
    echo "==> using the host's systemd"
    if [ -n "${PEAGEN_REDIS_URL:-}" ]; then url=$PEAGEN_REDIS_URL; else
        port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
        redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --logfile "$work/redis.log" &
        redis_pid=$!; url=redis://127.0.0.1:$port
        for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    fi
fi
echo "==> Redis at $url"

cfg=$work/peagen.toml
cat > "$cfg" <<TOML
[redis]
url = "$url"
[metrics]
spawner-listen = "127.0.0.1:$mport"
[spawner]
warm-pool = 1
max = 8
tasks-per-worker = 2
idle-timeout-secs = 4
scale-down-window-secs = 4
[spawner.worker-unit]
exec-start = ["$prefix/bin/peagen-worker", "--config", "$prefix/peagen.toml"]
[[handlers.command]]
kind = "work"
program = "/bin/sh"
args = ["-c", "sleep 2; cat"]
TOML
for b in peagen-worker peagen-spawnerd; do install_file "$bin/$b" "$prefix/bin/$b"; done
install_file "$cfg" "$prefix/peagen.toml"
ctl() { "$bin/peagenctl" --config "$cfg" "$@"; }

echo "==> starting peagen-spawnerd (Type=notify: returns after READY=1)"
run_in systemd-run -q --unit=peagen-spawnerd -p Type=notify -p WatchdogSec=30 \
    "$prefix/bin/peagen-spawnerd" --config "$prefix/peagen.toml"
for _ in $(seq 100); do [ "$(run_in systemctl list-units --plain --no-legend 'peagen-worker@*' | grep -c running)" -ge 1 ] && break; sleep 0.1; done
echo "    warm pool up: $(run_in systemctl list-units --plain --no-legend 'peagen-worker@*' | awk '{print $1}' | tr '\n' ' ')"

echo "==> pushing $TASKS '$KIND' tasks"
if [ "$KIND" = execute ]; then
    # Candidate programs as Peagen's evolve loop sends them: each defines
    # evaluate() and is timed in the sandbox. The last one is hostile: it
    # tries to reach Redis on loopback and read a host secret.
    python3 - "$TASKS" <<'PY' | ctl push --file - --json >/dev/null
import json, sys
n = int(sys.argv[1])
for i in range(1, n + 1):
    if i == n:
        src = ("import socket\ndef evaluate():\n"
               "    open('/etc/shadow').read()\n"
               "    socket.create_connection(('127.0.0.1', 6379), timeout=1)\n")
    else:
        src = ("import time\ndef evaluate():\n    time.sleep(1.5)\n"
               f"    return sum(k * k for k in range({20000 * i}))\n")
    print(json.dumps({"kind": "execute", "id": f"demo-{i}",
                      "payload": {"child_src": src, "entry_fn": "evaluate"}}))
PY
else
    for i in $(seq "$TASKS"); do echo "{\"kind\":\"$KIND\",\"id\":\"demo-$i\",\"payload\":{\"n\":$i}}"; done | ctl push --file - --json >/dev/null
fi

status() { run_in systemctl show -p StatusText --value peagen-spawnerd; }
t0=$(date +%s.%N); settled=0
printf '%6s  %-8s %s\n' time results "spawner status"
while :; do
    st=$(ctl queue stats --json); res=$(echo "$st" | jq .results); dead=$(echo "$st" | jq .dead_letters)
    # Every task here has an id, so a dead-lettered one also has its (error)
    # result: the results alone count the finished tasks.
    printf '%5.1fs  %3s/%-4s %s\n' "$(echo "$(date +%s.%N) - $t0" | bc)" "$res" "$TASKS" "$(status)"
    if [ "$res" -ge "$TASKS" ]; then
        live=$(run_in systemctl list-units --plain --no-legend 'peagen-worker@*' | grep -c . || true)
        [ "$live" -le 1 ] && settled=$((settled + 1))
        [ $settled -ge 2 ] && break
    fi
    if [ "$(echo "$(date +%s.%N) - $t0 > 120" | bc)" = 1 ]; then echo "demo: gave up after 120 s" >&2; exit 1; fi
    sleep 0.5
done
echo "==> all $TASKS tasks done ($dead dead-lettered); workers went idle and back to the warm pool"
sample=$(ctl task get demo-1 --json)
echo "    sample result: $(echo "$sample" | jq -c '{task_id,status,attempts,worker_id,data: (.data | {result, speed_ms, peak_kb, verdict: .verdict.status})}')"
if [ "$KIND" = execute ]; then
    echo "    hostile task: $(ctl task get "demo-$TASKS" --json | jq -c '{task_id,status,verdict: .data.verdict.status, stderr: (.data.verdict.stderr // "" | split("\n") | map(select(length > 0)) | last)}')"
fi
wid=$(echo "$sample" | jq -r .worker_id)
echo "==> spawner metrics"
curl -sf "http://127.0.0.1:$mport/metrics" | grep -E '^peagen_(spawns_total|worker_stops_total|spawn_failures_total|workers_desired|spawn_ready_seconds_(sum|count)|workers\{)' | sed 's/^/    /'
echo "==> that worker's log: journalctl PEAGEN_WORKER_ID=$wid"
run_in journalctl --no-pager -o short-precise "PEAGEN_WORKER_ID=$wid" | tail -4 | sed 's/^/    /'
