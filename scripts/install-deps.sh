#!/bin/sh
# Debian 12 packages the demo and the test suite need (run as root).
set -eu
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    redis-server redis-tools bubblewrap python3 dbus systemd util-linux iproute2 jq bc curl \
    prometheus debhelper rpm lintian pkg-config >/dev/null
# Debian starts redis-server on install when an init system is present; the
# tests and demo run their own private instances, so none is needed here.
