#!/bin/bash
# Test the Python client against a real redis-server and a real peagen-worker.
#
#   clients/python/run-tests.sh [pytest args...]
#
# Creates a virtualenv in a temporary directory, installs this package and
# pytest from PyPI, locates peagen-worker (PEAGEN_WORKER_BIN, else
# target/debug/peagen-worker, else `cargo build`), starts a private
# redis-server on a free loopback port, runs pytest, and cleans up after
# itself (every process it started is waited for). Environment:
#   PYTHON             interpreter for the venv (default python3)
#   PEAGEN_WORKER_BIN  peagen-worker to test against
#   PEAGENCTL_BIN      peagenctl for the throughput comparison (default: next
#                      to the worker binary; the row is left out if absent)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
python=${PYTHON:-python3}
say() { echo "run-tests.sh: $*" >&2; }

scratch=$(mktemp -d -t peagen-pyclient.XXXXXX)
redis_pid=""
cleanup() {
    if [ -n "$redis_pid" ]; then
        kill "$redis_pid" 2>/dev/null || true
        wait "$redis_pid" 2>/dev/null || true
    fi
    rm -rf "$scratch"
}
trap cleanup EXIT

# 1. A virtualenv (Debian ships venv/ensurepip separately in python3-venv).
if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        say "$python has no venv/ensurepip: running apt-get install -y python3-venv"
        if ! apt-get install -y python3-venv >&2; then
            say "retrying after apt-get update"
            apt-get update >&2 && apt-get install -y python3-venv >&2
        fi
    else
        say "$python cannot create virtualenvs: install python3-venv (apt-get install python3-venv)"
        exit 1
    fi
fi
say "creating a virtualenv in $scratch/venv and installing the package + pytest from PyPI"
"$python" -m venv "$scratch/venv"
# Built from a copy, so no build/ or egg-info is left in the source tree.
mkdir "$scratch/pkg"
cp -r "$here/pyproject.toml" "$here/README.md" "$here/src" "$scratch/pkg/"
"$scratch/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$scratch/pkg" pytest

# 2. peagen-worker (and peagenctl for the throughput row).
worker=${PEAGEN_WORKER_BIN:-$root/target/debug/peagen-worker}
if [ ! -x "$worker" ]; then
    say "no $worker: cargo build --bin peagen-worker --bin peagenctl"
    (cd "$root" && cargo build --bin peagen-worker --bin peagenctl)
    worker=$root/target/debug/peagen-worker
fi
export PEAGEN_WORKER_BIN=$worker
export PEAGENCTL_BIN=${PEAGENCTL_BIN:-$(dirname "$worker")/peagenctl}
say "worker: $PEAGEN_WORKER_BIN"

# 3. A private redis-server on a free loopback port.
command -v redis-server >/dev/null || { say "redis-server not found (apt-get install redis-server)"; exit 1; }
port=$("$scratch/venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir "$scratch/redis"
redis-server --port "$port" --bind 127.0.0.1 --dir "$scratch/redis" --save "" \
    >"$scratch/redis/log" 2>&1 &
redis_pid=$!
export PEAGEN_TEST_REDIS_URL="redis://127.0.0.1:$port/0"
"$scratch/venv/bin/python" - "$PEAGEN_TEST_REDIS_URL" <<'PY'
import sys, time, redis
r = redis.Redis.from_url(sys.argv[1])
for _ in range(200):
    try:
        r.ping(); sys.exit(0)
    except redis.ConnectionError:
        time.sleep(0.05)
sys.exit("redis-server did not answer on " + sys.argv[1])
PY
say "redis-server pid $redis_pid on $PEAGEN_TEST_REDIS_URL"

# 4. pytest (no caches or bytecode left in the source tree).
cd "$here"
rc=0
PYTHONDONTWRITEBYTECODE=1 "$scratch/venv/bin/python" -m pytest -p no:cacheprovider "$@" || rc=$?
exit $rc
