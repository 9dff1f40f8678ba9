#!/bin/bash
# A real systemd (PID 1 of a private PID+mount namespace) over an overlay of the
# host root, plus a private redis-server on host loopback that the box can reach
# (the box shares the host network namespace).
#
#   box.sh start DIR          boot; prints "pid=<systemd pid> redis_port=<port>"
#   box.sh exec DIR CMD...    run CMD inside the box (nsenter -m -p)
#   box.sh install DIR SRC DEST   copy a host file into the box (mode kept)
#   box.sh stop DIR           SIGKILL the box's systemd and our redis-server (by PID)
#
# DIR must not be under /tmp (the box gets a private /tmp and /run; booting a
# systemd on the host's own root once wiped the host's /tmp). Never run
# systemd on "/" itself: this script always pivots into an overlay first.
set -euo pipefail

die() { echo "box.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"
cmd=${1:-}; B=${2:-}
[ -n "$cmd" ] && [ -n "$B" ] || die "usage: box.sh start|exec|install|stop DIR ..."
case "$(realpath -m "$B")" in /tmp|/tmp/*) die "DIR must not be under /tmp" ;; esac
B=$(realpath -m "$B")

boxpid() { cat "$B/pid" 2>/dev/null || die "no box in $B (not started?)"; }

case "$cmd" in
start)
    [ ! -e "$B/pid" ] || { kill -0 "$(cat "$B/pid")" 2>/dev/null && die "box already running in $B"; }
    rm -rf "$B/upper" "$B/work"; mkdir -p "$B"/{upper,work,root}
    # Redis for the box: private port on loopback, no persistence.
    port=${BOX_REDIS_PORT:-$(( 20000 + RANDOM % 20000 ))}
    if [ -z "${BOX_NO_REDIS:-}" ]; then
        redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
            --daemonize no --logfile "$B/redis.log" --dir "$B" >/dev/null 2>&1 &
        echo $! > "$B/redis.pid"
        echo "$port" > "$B/redis.port"
    fi
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
    echo "$upid" > "$B/unshare.pid"
    # The systemd PID is unshare's only child.
    for _ in $(seq 100); do
        kids=$(cat /proc/$upid/task/*/children 2>/dev/null | tr -s ' ' | sed 's/ *$//') || true
        if [ -n "$kids" ] && [ "$(cat /proc/$kids/comm 2>/dev/null)" = systemd ]; then break; fi
        kill -0 "$upid" 2>/dev/null || { cat "$B/unshare.log" >&2; die "unshare exited"; }
        sleep 0.1
    done
    [ "$(cat /proc/$kids/comm 2>/dev/null)" = systemd ] || die "systemd did not start"
    echo "$kids" > "$B/pid"
    # Wait for the manager to finish booting.
    state=
    for _ in $(seq 300); do
        state=$(nsenter -t "$kids" -m -p systemctl is-system-running 2>/dev/null || true)
        case "$state" in running|degraded) break ;; esac
        sleep 0.1
    done
    case "$state" in running|degraded) ;; *) die "systemd in box not up (state: ${state:-none})" ;; esac
    if [ -z "${BOX_NO_REDIS:-}" ]; then
        for _ in $(seq 100); do
            redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05
        done
        redis-cli -p "$port" ping >/dev/null || die "redis did not start (see $B/redis.log)"
    fi
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
    if [ -f "$B/pid" ]; then
        pid=$(cat "$B/pid")
        if [ "$(cat /proc/$pid/comm 2>/dev/null)" = systemd ]; then kill -KILL "$pid" 2>/dev/null || true; fi
        rm -f "$B/pid"
    fi
    if [ -f "$B/unshare.pid" ]; then
        upid=$(cat "$B/unshare.pid")
        for _ in $(seq 50); do kill -0 "$upid" 2>/dev/null || break; sleep 0.1; done
        rm -f "$B/unshare.pid"
    fi
    if [ -f "$B/cgroup" ]; then
        cg=$(cat "$B/cgroup")
        for _ in $(seq 50); do
            left=0
            for h in /sys/fs/cgroup/*/; do
                [ -d "$h$cg" ] || continue
                find "$h$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
                [ -d "$h$cg" ] && left=1
            done
            [ $left = 0 ] && break; sleep 0.1
        done
        [ $left = 0 ] && rm -f "$B/cgroup"
    fi
    if [ -f "$B/redis.pid" ]; then
        rpid=$(cat "$B/redis.pid")
        if [ "$(cat /proc/$rpid/comm 2>/dev/null)" = redis-server ]; then kill -TERM "$rpid" 2>/dev/null || true; fi
        rm -f "$B/redis.pid"
    fi
    ;;
*) die "unknown command $cmd" ;;
esac
