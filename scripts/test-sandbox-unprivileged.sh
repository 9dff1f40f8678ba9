#!/bin/sh
# Run the sandbox pen-test battery (tests/sandbox*.rs) as an unprivileged
# system user, the way the worker's unit runs. Must be started as root (it
# creates the user and drops to it); CI runs it on a clean clone.
#
#   scripts/test-sandbox-unprivileged.sh [extra libtest args...]
#
# Env: SANDBOX_TEST_USER (default peagen-sbtest), CARGO_TARGET_DIR.
set -eu
cd "$(dirname "$0")/.."
user=${SANDBOX_TEST_USER:-peagen-sbtest}

if [ "$(id -u)" != 0 ]; then
    echo "run this as root (it switches to the unprivileged user $user)" >&2
    exit 64
fi
if ! id -u "$user" >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin "$user"
fi
uid=$(id -u "$user")
gid=$(id -g "$user")

# Build the test binaries as root, then copy them where the user can read them.
# (Not `tee /dev/stderr`: when stderr is a log file, that reopens it with
# O_TRUNC and wipes what came before.)
build=$(cargo test --no-run --test 'sandbox*' 2>&1)
printf '%s\n' "$build" >&2
bins=$(printf '%s\n' "$build" |
    sed -n 's/.*Executable tests\/sandbox[^ ]* (\(.*\))$/\1/p')
[ -n "$bins" ] || { echo "no sandbox test binaries found" >&2; exit 1; }
dir=$(mktemp -d /tmp/peagen-sbtest.XXXXXX)
trap 'rm -rf "$dir"' EXIT
chmod 755 "$dir"
for b in $bins; do
    cp "$b" "$dir/"
done
chmod 755 "$dir"/*

rc=0
for b in "$dir"/*; do
    echo "== $(basename "$b") as $user (uid $uid)"
    # A clean environment: nothing of root's reaches the tests; the
    # CARGO_* marker lets the env-leak test see that something was set.
    ( cd "$dir" && setpriv --reuid="$uid" --regid="$gid" --init-groups \
        --inh-caps=-all --bounding-set=-all --no-new-privs \
        env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$dir" \
        CARGO_SANDBOX_TEST_MARKER=1 "$b" --test-threads=2 "$@" ) || rc=$?
done
exit $rc
