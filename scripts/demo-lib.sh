# Shared by scripts/demo.sh and scripts/demo-evolve.sh (sourced, bash):
# building the binaries, finding a systemd (the host's, or one booted in a
# private namespace by tests/box/box.sh: never on the host's root), a Redis,
# starting peagen-spawnerd, and cleaning all of it up.
#
# The caller sets: here (the tree), demo (its name for messages), PROFILE,
# CARGO_TARGET_DIR. It may append PIDs of its own helpers to extra_pids
# (killed and reaped at cleanup).

extra_pids=
redis_pid=
warn() { echo "$demo: warning: $*" >&2; }
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

# demo_build: build the binaries; sets bin.
demo_build() {
    echo "==> building the binaries ($PROFILE; a first build compiles every dependency: several minutes, cargo shows progress)"
    (cd "$here" && if [ "$PROFILE" = release ]; then cargo build --release --bins; else cargo build --bins; fi)
    bin=$CARGO_TARGET_DIR/$PROFILE
}

# demo_systemd: a fresh scratch dir and the systemd to use; sets work, mode,
# prefix (where binaries and config go, as the units see it), run_in and
# install_file, and installs the cleanup trap.
demo_systemd() {
    # Never under /tmp: a box gets a private /tmp.
    work=$(mktemp -d "/var/tmp/peagen-$demo.XXXXXX")
    BOX=$here/tests/box/box.sh
    if [ "$(cat /proc/1/comm)" = systemd ]; then
        mode=host
        run_in() { "$@"; }
        install_file() { install -D -m "$(stat -c %a "$1")" "$1" "$2"; }
        # Worker units are named by the spawner: refuse to mix with a fabric
        # that already runs here, whose units cleanup would stop.
        if systemctl is-active -q peagen-spawnerd.service ||
            [ -n "$(systemctl list-units --plain --no-legend 'peagen-worker@*')" ]; then
            rmdir "$work"
            echo "$demo: peagen-spawnerd or peagen-worker@ units already run on this host; stop them first" >&2
            exit 1
        fi
        prefix=$(mktemp -d "/run/peagen-$demo.XXXXXX"); chmod 755 "$prefix"
    else
        mode=box
        run_in() { "$BOX" exec "$work/box" "$@"; }
        install_file() { "$BOX" install "$work/box" "$1" "$2"; }
        prefix=/run/peagen-demo   # inside the box's own /run
    fi
    trap demo_cleanup EXIT
}

demo_cleanup() {
    echo "==> cleaning up"
    run_in systemctl stop peagen-spawnerd.service 2>/dev/null || true
    run_in sh -c "systemctl stop 'peagen-worker@*.service'; systemctl reset-failed 'peagen-worker@*.service' peagen-spawnerd.service" 2>/dev/null || true
    # box.sh rm waits for the box and its redis-server to exit before it
    # removes their files; failures to clean up are warnings, not failures.
    if [ $mode = box ] && [ -d "$work/box" ]; then "$BOX" rm "$work/box" || warn "the box in $work/box was not fully removed"; fi
    for p in $extra_pids $redis_pid; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
    if [ $mode = host ]; then rm -rf "$prefix" || warn "could not remove $prefix"; fi
    rm -rf "$work" || warn "could not remove $work"
}

# demo_redis: boot the box (box mode) and find or start Redis; sets url and
# redis_port.
demo_redis() {
    if [ $mode = box ]; then
        echo "==> PID 1 is not systemd: booting systemd $(systemctl --version | awk 'NR==1{print $2}') in a private namespace (about 1 s)"
        mkdir "$work/box"
        if [ -n "${PEAGEN_REDIS_URL:-}" ]; then BOX_NO_REDIS=1 "$BOX" start "$work/box" >/dev/null
        else "$BOX" start "$work/box" >/dev/null; fi
        url=${PEAGEN_REDIS_URL:-redis://127.0.0.1:$(cat "$work/box/redis.port")}
    else
        echo "==> using the host's systemd"
        if [ -n "${PEAGEN_REDIS_URL:-}" ]; then url=$PEAGEN_REDIS_URL; else
            # Our own server: the one whose INFO names our pid (a free port
            # may be taken before redis binds it: then try another).
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
            [ -n "$redis_pid" ] || { echo "$demo: redis-server did not start (see $work/redis.log)" >&2; exit 1; }
            url=redis://127.0.0.1:$port
        fi
    fi
    redis_port=$(echo "$url" | sed -n 's|^redis://[^/]*:\([0-9]*\).*|\1|p')
    echo "==> Redis at $(echo "$url" | sed 's|//[^@/]*@|//***@|')"
}

# demo_install CFG: the binaries and the config, where the units find them.
demo_install() {
    for b in peagen-worker peagen-spawnerd; do install_file "$bin/$b" "$prefix/bin/$b"; done
    install_file "$1" "$prefix/peagen.toml"
}

workers() { run_in systemctl list-units --plain --no-legend 'peagen-worker@*' | awk '{print $1}'; }

# demo_spawnerd: start peagen-spawnerd as a unit and wait for its warm pool.
demo_spawnerd() {
    echo "==> starting peagen-spawnerd (Type=notify: systemd-run returns once it is ready)"
    run_in systemd-run -q --unit=peagen-spawnerd -p Type=notify -p WatchdogSec=30 \
        "$prefix/bin/peagen-spawnerd" --config "$prefix/peagen.toml"
    for _ in $(seq 100); do [ -n "$(workers)" ] && break; sleep 0.1; done
    echo "    warm pool: $(workers | tr '\n' ' ')"
}
