#!/bin/bash
# Benchmark: burst into an empty queue (warm pool 0) -> first worker READY=1,
# and -> queue drained, with peagen-spawnerd driving a real systemd 252 in the
# test box (tests/box/box.sh), real D-Bus, real Redis, the real peagen-worker.
#
#   scripts/bench-spawner.sh [ROUNDS] [TASKS]     (root; builds if needed)
#
# The reference column is the seed design's 30 s polling loop, computed from
# the measured spawn time (a poll lands uniformly in a 30 s period: mean
# +15 s, worst +30 s); it is not a measurement of the seed.
set -euo pipefail
ROUNDS=${1:-5}; TASKS=${2:-20}
here=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}
[ "$(id -u)" = 0 ] || { echo "bench-spawner: needs root (boots systemd in a private namespace)" >&2; exit 1; }
BOX=$(mktemp -d /var/tmp/peagen-bench-box.XXXXXX)   # fresh per run; never under /tmp
box() { "$here/tests/box/box.sh" "$@"; }
trap 'box rm "$BOX" || echo "bench-spawner: warning: cleaning up $BOX failed" >&2' EXIT
(cd "$here" && cargo build --release --bins -q)
bin=$CARGO_TARGET_DIR/release
box start "$BOX" >/dev/null
port=$(cat "$BOX/redis.port")
mport=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
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
[[handlers.command]]
kind = "sleep"
program = "/bin/sh"
args = ["-c", "sleep 1; cat"]
TOML
for b in peagen-worker peagen-spawnerd; do box install "$BOX" "$bin/$b" "/usr/local/bin/$b"; done
box install "$BOX" "$cfg" /etc/peagen/peagen.toml
box exec "$BOX" systemd-run -q --unit=peagen-spawnerd -p Type=notify /usr/local/bin/peagen-spawnerd --config /etc/peagen/peagen.toml
ctl() { "$bin/peagenctl" --config "$cfg" "$@"; }
now_us() { date +%s%6N; }
live() { box exec "$BOX" systemctl list-units --plain --no-legend 'peagen-worker@*' | grep -c . || true; }
metric() { curl -sf "http://127.0.0.1:$mport/metrics" | awk -v m="$1" '$1==m {print $2}'; }

printf '%-6s %8s %18s %16s %14s %12s\n' round tasks push→first_READY spawn→READY push→drained peak_workers
results0=0
declare -a firsts drains
for r in $(seq "$ROUNDS"); do
    # Wait for an empty fleet (warm pool 0).
    for _ in $(seq 300); do [ "$(live)" = 0 ] && break; sleep 0.1; done
    c0=$(metric peagen_spawn_ready_seconds_count); s0=$(metric peagen_spawn_ready_seconds_sum)
    t0=$(now_us)
    ctl push -k sleep --count "$TASKS" --json >/dev/null
    first=; peak=0
    while :; do
        n=$(live); [ "$n" -gt "$peak" ] && peak=$n
        if [ -z "$first" ]; then
            ts=$(box exec "$BOX" sh -c "systemctl show -p ActiveEnterTimestamp --value --timestamp=us+utc 'peagen-worker@*'" | grep . | sort | head -1 || true)
            [ -n "$ts" ] && first=$(( $(date -d "$ts" +%s%6N) - t0 ))
        fi
        st=$(ctl queue stats --json)
        done_n=$(echo "$st" | jq .results); len=$(echo "$st" | jq .length)
        if [ "$done_n" -ge $((results0 + TASKS)) ] && [ "$len" = 0 ]; then break; fi
        sleep 0.05
    done
    drained=$(( $(now_us) - t0 )); results0=$((results0 + TASKS))
    c1=$(metric peagen_spawn_ready_seconds_count); s1=$(metric peagen_spawn_ready_seconds_sum)
    spawn=$(python3 -c "print(f'{($s1-$s0)/max(1,$c1-$c0)*1000:.0f} ms')")
    printf '%-6s %8s %15.0f ms %16s %11.2f s %12s\n' "$r" "$TASKS" "$(echo "$first/1000" | bc -l)" "$spawn" "$(echo "$drained/1000000" | bc -l)" "$peak"
    firsts+=("$first"); drains+=("$drained")
done
med() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mf=$(med "${firsts[@]}"); md=$(med "${drains[@]}")
echo
printf '%-34s %14s %14s\n' "" "first READY" "drained"
printf '%-34s %11.0f ms %12.2f s\n' "peagen-spawnerd (median)" "$(echo "$mf/1000" | bc -l)" "$(echo "$md/1000000" | bc -l)"
printf '%-34s %11.0f ms %12.2f s\n' "seed 30 s poll (computed, mean)" "$(echo "15000 + $mf/1000" | bc -l)" "$(echo "15 + $md/1000000" | bc -l)"
printf '%-34s %11.0f ms %12.2f s\n' "seed 30 s poll (computed, worst)" "$(echo "30000 + $mf/1000" | bc -l)" "$(echo "30 + $md/1000000" | bc -l)"
echo "target: first worker READY in < 500 ms after the push"
