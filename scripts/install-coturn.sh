#!/usr/bin/env bash
# Install coturn's client tools (turnutils_uclient) for tests/relay/test_turn_coturn_client.py,
# which uses them as a third-party TURN client against our server. Idempotent: nothing
# to do when turnutils_uclient is on PATH; without root or apt-get it only says so and
# the test skips. The coturn server the package also installs is not started.
set -euo pipefail
if command -v turnutils_uclient >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-coturn.sh: no root or no apt-get, not installing coturn;" \
    "the coturn interop test will skip" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends coturn
# Debian enables nothing by default (TURNSERVER_ENABLED is unset); keep it that way.
