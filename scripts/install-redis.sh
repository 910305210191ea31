#!/usr/bin/env bash
# Install Debian's redis-server for the relay cluster tests (tests/relay/test_cluster_*.py),
# which start their own private redis-server processes. Idempotent: nothing to do when
# redis-server is on PATH; without root or apt-get it only says so and those tests skip.
# The system service the package would start is kept from starting (policy-rc.d).
set -euo pipefail
if command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-redis.sh: no root or no apt-get, not installing redis-server;" \
    "the relay cluster tests will skip" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
policy=/usr/sbin/policy-rc.d
added_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod +x "$policy"
  added_policy=1
fi
trap 'if [ "$added_policy" = 1 ]; then rm -f "$policy"; fi' EXIT
apt-get update -q
apt-get install -y -q --no-install-recommends redis-server
