#!/bin/bash
# A real systemd (PID 1 of a private PID+mount namespace) over an overlay of the
# host root, plus a private redis-server on host loopback that the box can reach
# (the box shares the host network namespace).
#
#   box.sh start DIR          boot; prints "pid=<systemd pid> redis_port=<port> state=<state>"
#                             (for scripts: DIR/pid and DIR/redis.port hold the same)
#   box.sh exec DIR CMD...    run CMD inside the box (nsenter -m -p)
#   box.sh install DIR SRC DEST   copy a host file into the box (mode kept)
#   box.sh stop DIR           SIGKILL the box's systemd (which takes every process
#                             of the box with it) and SIGTERM our redis-server, and
#                             WAIT until each is gone; then remove the box's cgroups.
#                             Anything left: a warning on stderr and exit 1.
#   box.sh rm DIR             stop, then remove DIR (a warning and exit 1 if that fails)
#
# DIR: a fresh directory per run (callers use `mktemp -d`), never shared between
# runs and never under /tmp (the box gets a private /tmp and /run; booting a
# systemd on the host's own root once wiped the host's /tmp). Never run systemd
# on "/" itself: this script always pivots into an overlay first.
# Env: BOX_NO_REDIS=1 (no redis-server), BOX_REDIS_PORT (a fixed port; default:
# a free one, retried with another if redis cannot bind it).
set -euo pipefail

die() { echo "box.sh: $*" >&2; exit 1; }
warn() { echo "box.sh: warning: $*" >&2; }
[ "$(id -u)" = 0 ] || die "must run as root"
cmd=${1:-}; B=${2:-}
[ -n "$cmd" ] && [ -n "$B" ] || die "usage: box.sh start|exec|install|stop|rm DIR ..."
case "$(realpath -m "$B")" in /tmp|/tmp/*) die "DIR must not be under /tmp" ;; esac
B=$(realpath -m "$B")

boxpid() { cat "$B/pid" 2>/dev/null || die "no box in $B (not started?)"; }

# A process is known by pid and start time (a pid alone may be reused by the
# time we stop). Zombies count as gone: whoever reaps them is not us.
proc_start() { # PID -> start time, empty if gone or a zombie
    local s
    s=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null) || return 0
    [ "${s%% *}" = Z ] && return 0
    echo "$s" | awk '{print $20}'
}
remember() { echo "$2 $(proc_start "$2")" > "$B/$1.proc"; } # NAME PID
alive() { # NAME: is the process recorded as NAME still running?
    local pid st
    [ -f "$B/$1.proc" ] || return 1
    read -r pid st < "$B/$1.proc" || return 1
    [ -n "$st" ] && [ "$(proc_start "$pid")" = "$st" ]
}
signal() { alive "$1" && kill "-$2" "$(cut -d' ' -f1 < "$B/$1.proc")" 2>/dev/null || true; }
wait_gone() { # NAME TENTHS: wait up to TENTHS/10 s; status 0 when gone
    local i
    for ((i = 0; i < $2; i++)); do alive "$1" || return 0; sleep 0.1; done
    ! alive "$1"
}

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# Our own redis-server (not one that happens to answer on the port): its
# INFO names our pid. Another process may take a free port between our probe
# and redis's bind: then redis exits and we try another port.
start_redis() {
    local port rpid try i
    for try in 1 2 3 4 5; do
        port=${BOX_REDIS_PORT:-$(free_port)}
        redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
            --daemonize no --logfile "$B/redis.log" --dir "$B" </dev/null >/dev/null 2>&1 &
        rpid=$!
        remember redis "$rpid"
        for ((i = 0; i < 200; i++)); do
            alive redis || break
            if [ "$(redis-cli -p "$port" INFO server 2>/dev/null | tr -d '\r' | sed -n 's/^process_id://p')" = "$rpid" ]; then
                echo "$port" > "$B/redis.port"
                return 0
            fi
            sleep 0.05
        done
        signal redis KILL; wait "$rpid" 2>/dev/null || true
        [ -z "${BOX_REDIS_PORT:-}" ] || break
        warn "redis-server did not come up on port $port (taken?), trying another"
    done
    die "redis did not start (see $B/redis.log)"
}

stop_box() {
    local left=() cg h
    # SIGKILL of a PID namespace's init kills every process in it; unshare
    # (its parent) exits once it is gone, and with it the box's mounts.
    signal systemd KILL
    wait_gone systemd 200 || left+=("systemd (pid $(cut -d' ' -f1 < "$B/systemd.proc"))")
    wait_gone unshare 200 || left+=("unshare (pid $(cut -d' ' -f1 < "$B/unshare.proc"))")
    # Redis writes its log until it exits: wait, so that nothing re-creates
    # files in DIR while the caller removes it.
    if [ -f "$B/redis.proc" ]; then
        signal redis TERM
        if ! wait_gone redis 100; then
            signal redis KILL
            wait_gone redis 50 || left+=("redis-server (pid $(cut -d' ' -f1 < "$B/redis.proc"))")
        fi
    fi
    if [ -f "$B/cgroup" ]; then
        cg=$(cat "$B/cgroup")
        for _ in $(seq 50); do
            local remaining=0
            for h in /sys/fs/cgroup/*/; do
                [ -d "$h$cg" ] || continue
                find "$h$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
                [ -d "$h$cg" ] && remaining=1
            done
            [ $remaining = 0 ] && break; sleep 0.1
        done
        for h in /sys/fs/cgroup/*/; do [ -d "$h$cg" ] && left+=("cgroup $h$cg"); done
    fi
    if [ ${#left[@]} -gt 0 ]; then
        warn "box in $B not fully stopped: still there: ${left[*]}"
        return 1
    fi
    rm -f "$B/pid" "$B"/*.proc "$B/cgroup"
}

case "$cmd" in
start)
    ! alive systemd || die "box already running in $B"
    rm -rf "$B/upper" "$B/work"; mkdir -p "$B"/{upper,work,root}
    # Redis for the box: private port on loopback, no persistence.
    port=
    if [ -z "${BOX_NO_REDIS:-}" ]; then start_redis; port=$(cat "$B/redis.port"); fi
    # Own cgroup per box in every hierarchy, so several boxes (and the host)
    # never share a cgroup root: systemd in a container manages the subtree
    # it starts in.
    cg="peagen-box.$(basename "$B").$$"
    echo "$cg" > "$B/cgroup"
    # Boot systemd. setsid: its own session, detached from our terminal.
    setsid unshare --pid --fork --mount --propagation private sh -c '
        set -e; B="$1"; cg="$2"
        for h in /sys/fs/cgroup/*/; do
            [ -e "$h/cgroup.procs" ] || continue
            mkdir -p "$h$cg" && echo 0 > "$h$cg/cgroup.procs" || true
        done
        mount -t overlay overlay -o "lowerdir=/,upperdir=$B/upper,workdir=$B/work" "$B/root"
        mount -t proc proc "$B/root/proc"
        mount --rbind /sys "$B/root/sys"
        mount --rbind /dev "$B/root/dev"
        mount -t tmpfs tmpfs "$B/root/run"
        mount -t tmpfs tmpfs "$B/root/tmp"
        cd "$B/root"; mkdir -p oldroot; pivot_root . oldroot; umount -l /oldroot
        export container=other
        exec /usr/lib/systemd/systemd --system --unit=basic.target --log-target=kmsg \
            </dev/null >/dev/null 2>&1' box "$B" "$cg" </dev/null >"$B/unshare.log" 2>&1 &
    upid=$!
    remember unshare "$upid"
    # The systemd PID is unshare's only child.
    kids=
    for _ in $(seq 100); do
        kids=$(cat /proc/$upid/task/*/children 2>/dev/null | tr -s ' ' | sed 's/ *$//') || true
        if [ -n "$kids" ] && [ "$(cat /proc/$kids/comm 2>/dev/null)" = systemd ]; then break; fi
        alive unshare || { cat "$B/unshare.log" >&2; stop_box || true; die "unshare exited"; }
        sleep 0.1
    done
    [ "$(cat /proc/$kids/comm 2>/dev/null)" = systemd ] || { stop_box || true; die "systemd did not start"; }
    remember systemd "$kids"
    echo "$kids" > "$B/pid"
    # Wait for the manager to finish booting.
    state=
    for _ in $(seq 300); do
        state=$(nsenter -t "$kids" -m -p systemctl is-system-running 2>/dev/null || true)
        case "$state" in running|degraded) break ;; esac
        sleep 0.1
    done
    case "$state" in running|degraded) ;; *) stop_box || true; die "systemd in box not up (state: ${state:-none})" ;; esac
    echo "pid=$kids redis_port=${port} state=$state"
    ;;
exec)
    shift 2; pid=$(boxpid)
    exec nsenter -t "$pid" -m -p "$@"
    ;;
install)
    src=$3; dst=$4; pid=$(boxpid)
    mode=$(stat -c %a "$src")
    nsenter -t "$pid" -m -p sh -c 'mkdir -p "$(dirname "$1")" && cat > "$1.new" && chmod "$2" "$1.new" && mv -f "$1.new" "$1"' \
        install "$dst" "$mode" < "$src"
    ;;
stop)
    stop_box
    ;;
rm)
    rc=0
    stop_box || rc=1
    if [ $rc = 0 ]; then
        rm -rf "$B" || { warn "could not remove $B"; rc=1; }
    else
        warn "kept $B (processes of the box may still use it)"
    fi
    exit $rc
    ;;
*) die "unknown command $cmd" ;;
esac
