#!/bin/bash
# The main job, end to end: peagen-spawnerd scales transient
# peagen-worker@<uuid>.service units on a real systemd from a Redis queue.
#
#   scripts/demo.sh            (root, fresh Debian 12: installs what it needs)
#
# Uses the host's systemd when PID 1 is systemd, otherwise boots one in a
# private PID+mount namespace (tests/box/box.sh; never on the host's root).
# Uses $PEAGEN_REDIS_URL when set, otherwise starts a private redis-server.
# Env: DEMO_TASKS (default 24), DEMO_KIND (default "execute": Peagen-style
# {child_src, entry_fn} Python candidates run in the sandbox, the last one
# hostile; "work": a command handler that takes 2 s and squares its payload's n;
# "evolve": scripts/demo-evolve.sh, when present), CARGO_TARGET_DIR,
# DEMO_PROFILE (debug|release, default debug).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}
TASKS=${DEMO_TASKS:-24}; KIND=${DEMO_KIND:-execute}; PROFILE=${DEMO_PROFILE:-debug}
[ "$(id -u)" = 0 ] || { echo "demo: run as root (it starts system units)" >&2; exit 1; }
# The Rust toolchain check (stops with how to get it) and Debian packages.
"$here/scripts/install-deps.sh"

# ---- hook: DEMO_KIND=evolve is another demo, in its own script --------------
if [ "$KIND" = evolve ]; then
    [ -x "$here/scripts/demo-evolve.sh" ] || { echo "demo: DEMO_KIND=evolve needs scripts/demo-evolve.sh, which this tree does not have" >&2; exit 64; }
    exec "$here/scripts/demo-evolve.sh" "$@"
fi
case "$KIND" in execute|work) ;; *) echo "demo: DEMO_KIND must be execute, work or evolve (not $KIND)" >&2; exit 64 ;; esac
[ "$TASKS" -ge 2 ] 2>/dev/null || { echo "demo: DEMO_TASKS must be a number >= 2" >&2; exit 64; }

echo "==> building the binaries ($PROFILE; a first build compiles every dependency: several minutes, cargo shows progress)"
(cd "$here" && if [ "$PROFILE" = release ]; then cargo build --release --bins; else cargo build --bins; fi)
bin=$CARGO_TARGET_DIR/$PROFILE
# A fresh scratch directory per run (never under /tmp: a box gets its own).
work=$(mktemp -d /var/tmp/peagen-demo.XXXXXX)
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
mport=$(free_port)
BOX=$here/tests/box/box.sh

if [ "$(cat /proc/1/comm)" = systemd ]; then
    mode=host
    run_in() { "$@"; }
    install_file() { install -D -m "$(stat -c %a "$1")" "$1" "$2"; }
    # Worker units are named by the spawner (peagen-worker@<uuid>): refuse to
    # mix with a fabric that already runs here, whose units cleanup would stop.
    if systemctl is-active -q peagen-spawnerd.service ||
        [ -n "$(systemctl list-units --plain --no-legend 'peagen-worker@*')" ]; then
        rmdir "$work"
        echo "demo: peagen-spawnerd or peagen-worker@ units already run on this host; stop them first" >&2
        exit 1
    fi
    prefix=$(mktemp -d /run/peagen-demo.XXXXXX); chmod 755 "$prefix"
else
    mode=box
    run_in() { "$BOX" exec "$work/box" "$@"; }
    install_file() { "$BOX" install "$work/box" "$1" "$2"; }
    prefix=/run/peagen-demo   # inside the box's own /run
fi

redis_pid=
warn() { echo "demo: warning: $*" >&2; }
cleanup() {
    echo "==> cleaning up"
    run_in systemctl stop peagen-spawnerd.service 2>/dev/null || true
    run_in sh -c "systemctl stop 'peagen-worker@*.service'; systemctl reset-failed 'peagen-worker@*.service' peagen-spawnerd.service" 2>/dev/null || true
    # box.sh rm waits for the box and its redis-server to exit before it
    # removes their files; failures to clean up are warnings, not failures.
    if [ $mode = box ] && [ -d "$work/box" ]; then "$BOX" rm "$work/box" || warn "the box in $work/box was not fully removed"; fi
    if [ -n "$redis_pid" ]; then kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; fi
    if [ $mode = host ]; then rm -rf "$prefix" || warn "could not remove $prefix"; fi
    rm -rf "$work" || warn "could not remove $work"
}
trap cleanup EXIT

if [ $mode = box ]; then
    echo "==> PID 1 is not systemd: booting systemd $(systemctl --version | awk 'NR==1{print $2}') in a private namespace (about 1 s)"
    mkdir "$work/box"
    if [ -n "${PEAGEN_REDIS_URL:-}" ]; then BOX_NO_REDIS=1 "$BOX" start "$work/box" >/dev/null
    else "$BOX" start "$work/box" >/dev/null; fi
    url=${PEAGEN_REDIS_URL:-redis://127.0.0.1:$(cat "$work/box/redis.port")}
else
    echo "==> using the host's systemd"
    if [ -n "${PEAGEN_REDIS_URL:-}" ]; then url=$PEAGEN_REDIS_URL; else
        # Our own server: the one whose INFO names our pid (a free port may
        # be taken before redis binds it: then try another).
        for _ in 1 2 3 4 5; do
            port=$(free_port)
            redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
                --logfile "$work/redis.log" </dev/null >/dev/null 2>&1 &
            redis_pid=$!
            for _ in $(seq 100); do
                kill -0 "$redis_pid" 2>/dev/null || break
                [ "$(redis-cli -p "$port" INFO server 2>/dev/null | tr -d '\r' | sed -n 's/^process_id://p')" = "$redis_pid" ] && break 2
                sleep 0.05
            done
            kill "$redis_pid" 2>/dev/null || true; wait "$redis_pid" 2>/dev/null || true; redis_pid=
        done
        [ -n "$redis_pid" ] || { echo "demo: redis-server did not start (see $work/redis.log)" >&2; exit 1; }
        url=redis://127.0.0.1:$port
    fi
fi
redis_port=$(echo "$url" | sed -n 's|^redis://[^/]*:\([0-9]*\).*|\1|p')
echo "==> Redis at $(echo "$url" | sed 's|//[^@/]*@|//***@|')"

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
args = ["-c", "sleep 2; jq -c '{n: .payload.n, square: (.payload.n * .payload.n)}'"]
TOML
for b in peagen-worker peagen-spawnerd; do install_file "$bin/$b" "$prefix/bin/$b"; done
install_file "$cfg" "$prefix/peagen.toml"
ctl() { "$bin/peagenctl" --config "$cfg" "$@"; }
workers() { run_in systemctl list-units --plain --no-legend 'peagen-worker@*' | awk '{print $1}'; }

echo "==> starting peagen-spawnerd (Type=notify: systemd-run returns once it is ready)"
run_in systemd-run -q --unit=peagen-spawnerd -p Type=notify -p WatchdogSec=30 \
    "$prefix/bin/peagen-spawnerd" --config "$prefix/peagen.toml"
for _ in $(seq 100); do [ -n "$(workers)" ] && break; sleep 0.1; done
echo "    warm pool: $(workers | tr '\n' ' ')"

if [ "$KIND" = execute ]; then
    echo "==> pushing $TASKS execute tasks: $((TASKS - 1)) candidate programs, each timed in the sandbox, and 1 hostile one"
    # Candidate programs as Peagen's evolve loop sends them: each defines
    # evaluate(). The last one is hostile: it tries each forbidden step in
    # turn and reports what the sandbox answered, so every attempt is shown
    # (a program that stopped at its first refusal would hide the others).
    python3 - "$TASKS" "${redis_port:-6379}" <<'PY' | ctl push --file - --json >/dev/null
import json, sys
n, port = int(sys.argv[1]), int(sys.argv[2])
hostile = '''
import errno, os, socket, time

def refused(e):
    if e.errno is None:
        return "blocked: %r" % e
    return "blocked: %s (%s)" % (errno.errorcode.get(e.errno, e.errno), os.strerror(e.errno))

def read_secret():
    try:
        with open("/etc/shadow") as f:
            return "NOT BLOCKED: read %d bytes" % len(f.read())
    except OSError as e:
        return refused(e)

def connect_redis():
    try:
        socket.create_connection(("127.0.0.1", PORT), timeout=2).close()
        return "NOT BLOCKED: connected"
    except OSError as e:
        return refused(e)

def fork_bomb():
    kids = []
    try:
        while len(kids) < 5000:
            pid = os.fork()
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            kids.append(pid)
        return "NOT BLOCKED: %d processes" % len(kids)
    except OSError as e:
        return refused(e) + " after %d processes" % len(kids)
    finally:
        for pid in kids:
            os.kill(pid, 9)
            os.waitpid(pid, 0)

def evaluate():
    return [["read the host's /etc/shadow", read_secret()],
            ["connect to Redis on 127.0.0.1:PORT", connect_redis()],
            ["fork bomb", fork_bomb()]]
'''.replace("PORT", str(port))
for i in range(1, n + 1):
    if i == n:
        src = hostile
    else:
        src = ("import time\ndef evaluate():\n    time.sleep(1.5)\n"
               f"    return sum(k * k for k in range({20000 * i}))\n")
    print(json.dumps({"kind": "execute", "id": f"demo-{i}",
                      "payload": {"child_src": src, "entry_fn": "evaluate"}}))
PY
else
    echo "==> pushing $TASKS work tasks (a command handler: 2 s each, squares its payload's n)"
    for i in $(seq "$TASKS"); do echo "{\"kind\":\"$KIND\",\"id\":\"demo-$i\",\"payload\":{\"n\":$i}}"; done |
        ctl push --file - --json >/dev/null
fi

# Progress: one line whenever the results or the spawner's status change.
status() { run_in systemctl show -p StatusText --value peagen-spawnerd; }
t0=$(date +%s.%N); settled=0; last=
printf '    %6s  %-7s %s\n' time done "spawner status"
while :; do
    st=$(ctl queue stats --json); res=$(echo "$st" | jq .results); dead=$(echo "$st" | jq .dead_letters)
    line="$(printf '%3s/%-3s' "$res" "$TASKS") $(status)"
    if [ "$line" != "$last" ]; then
        printf '    %5.1fs  %s\n' "$(echo "$(date +%s.%N) - $t0" | bc)" "$line"
        last=$line
    fi
    # Every task here has an id, so a dead-lettered one also has its (error)
    # result: the results alone count the finished tasks.
    if [ "$res" -ge "$TASKS" ]; then
        [ "$(workers | grep -c . || true)" -le 1 ] && settled=$((settled + 1))
        [ $settled -ge 2 ] && break
    fi
    if [ "$(echo "$(date +%s.%N) - $t0 > 120" | bc)" = 1 ]; then echo "demo: gave up after 120 s" >&2; exit 1; fi
    sleep 0.5
done
echo "==> all $TASKS tasks done ($dead dead-lettered); the idle workers went, back to the warm pool"

sample=$(ctl task get demo-1 --json)
wid=$(echo "$sample" | jq -r .worker_id)
if [ "$KIND" = execute ]; then
    echo "$sample" | jq -r '"    sample result (demo-1): \(.status), evaluate() returned \(.data.result), \(.data.speed_ms | floor) ms, peak \(.data.peak_kb) kB, sandbox verdict \(.data.verdict.status), attempt \(.attempts), worker \(.worker_id)"'
    h=$(ctl task get "demo-$TASKS" --json)
    echo "==> the hostile candidate (demo-$TASKS, task $(echo "$h" | jq -r .status)): each forbidden step and the sandbox's answer"
    if [ "$(echo "$h" | jq -r '.data.result | type')" = array ]; then
        echo "$h" | jq -r '.data.result[] | @tsv' |
            while IFS=$'\t' read -r what answer; do printf '    %-40s %s\n' "$what" "$answer"; done
    else
        echo "    no per-step report; verdict: $(echo "$h" | jq -c '.data.verdict | {status, message}')"
    fi
else
    echo "$sample" | jq -r '"    sample result (demo-1): \(.status), data \(.data | tojson), attempt \(.attempts), worker \(.worker_id)"'
fi

m=$(curl -sf "http://127.0.0.1:$mport/metrics" || true)
val() { echo "$m" | awk -v k="$1" '$1 == k {print $2; exit}'; }
spawns=$(val peagen_spawns_total); stops=$(val peagen_worker_stops_total); fails=$(val peagen_spawn_failures_total)
rs=$(val peagen_spawn_ready_seconds_sum); rc=$(val peagen_spawn_ready_seconds_count)
ready=$( [ -n "$rc" ] && [ "${rc%.*}" != 0 ] && echo "scale=0; 1000 * $rs / $rc" | bc || echo "?")
echo "==> spawner (http://127.0.0.1:$mport/metrics): started ${spawns:-?} workers (ready after ${ready} ms on average), stopped ${stops:-?} idle ones, ${fails:-?} failed starts"
echo "==> worker $wid's log (journalctl PEAGEN_WORKER_ID=$wid), last lines:"
run_in journalctl --no-pager -o cat "PEAGEN_WORKER_ID=$wid" | tail -3 | cut -c1-160 | sed 's/^/    /'
