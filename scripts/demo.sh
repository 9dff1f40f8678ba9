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

demo=demo
. "$here/scripts/demo-lib.sh"
demo_build
demo_systemd
mport=$(free_port)
demo_redis

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
demo_install "$cfg"
ctl() { "$bin/peagenctl" --config "$cfg" "$@"; }
demo_spawnerd

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
if [ "$KIND" = execute ]; then
    # Candidates run in warm mode (a prepared interpreter forks per task,
    # docs/security.md); a worker that cannot start one says so and runs cold.
    cold=$(run_in journalctl --no-pager -o cat -u 'peagen-worker@*' | grep -c "warm mode unavailable" || true)
    echo "==> sandbox mode: $((TASKS - cold)) of $TASKS candidates ran warm (forked from a prepared interpreter), $cold fell back to cold"
fi
echo "==> worker $wid's log (journalctl PEAGEN_WORKER_ID=$wid), last lines:"
run_in journalctl --no-pager -o cat "PEAGEN_WORKER_ID=$wid" | tail -3 | cut -c1-160 | sed 's/^/    /'
