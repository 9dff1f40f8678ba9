#!/bin/sh
# Run the sandbox pen-test battery (tests/sandbox*.rs) as an unprivileged
# system user, the way the worker's unit runs. Must be started as root: it
# creates the user, drops to it, and removes the user again at the end (also
# on failure or interruption) when it created it.
#
#   scripts/test-sandbox-unprivileged.sh [extra libtest args...]
#
# Env: SANDBOX_TEST_USER (default peagen-sbtest; an existing user is used and
# kept), CARGO_TARGET_DIR.
set -eu
cd "$(dirname "$0")/.."
user=${SANDBOX_TEST_USER:-peagen-sbtest}

if [ "$(id -u)" != 0 ]; then
    echo "run this as root (it switches to the unprivileged user $user)" >&2
    exit 64
fi

dir=$(mktemp -d /tmp/peagen-sbtest.XXXXXX)
created=
cleanup() {
    rc=$?
    if [ -n "$created" ]; then
        userdel "$user" || { echo "test-sandbox-unprivileged: warning: could not remove user $user (userdel $user)" >&2; }
    fi
    rm -rf "$dir" || echo "test-sandbox-unprivileged: warning: could not remove $dir" >&2
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if ! id -u "$user" >/dev/null 2>&1; then
    useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin \
        --comment "peagen-fabric sandbox tests (removed at the end)" "$user"
    created=1
else
    echo "test-sandbox-unprivileged: using the existing user $user (kept)"
fi
uid=$(id -u "$user")
gid=$(id -g "$user")

# Build the test binaries as root (cargo's progress on stderr; a first build
# takes minutes), then copy them where the user can read them.
echo "test-sandbox-unprivileged: building the sandbox test binaries"
cargo test --no-run --test 'sandbox*' --message-format=json-render-diagnostics > "$dir/build.json"
bins=$(jq -r 'select(.reason == "compiler-artifact" and .profile.test == true
                     and (.target.name | startswith("sandbox"))) | .executable' "$dir/build.json")
[ -n "$bins" ] || { echo "no sandbox test binaries found" >&2; exit 1; }
rm -f "$dir/build.json"
mkdir "$dir/bin"
for b in $bins; do
    cp "$b" "$dir/bin/"
done
chmod 755 "$dir" "$dir/bin" "$dir"/bin/*

rc=0
for b in "$dir"/bin/*; do
    echo "== $(basename "$b") as $user (uid $uid)"
    # A clean environment: nothing of root's reaches the tests; the
    # CARGO_* marker lets the env-leak test see that something was set.
    ( cd "$dir" && setpriv --reuid="$uid" --regid="$gid" --init-groups \
        --inh-caps=-all --bounding-set=-all --no-new-privs \
        env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$dir" \
        CARGO_SANDBOX_TEST_MARKER=1 "$b" --test-threads=2 "$@" ) || rc=$?
done
exit $rc
