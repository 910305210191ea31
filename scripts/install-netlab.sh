#!/usr/bin/env bash
# Install what tests/netlab needs: iproute2 (ip netns, veth, bridge), nftables, conntrack.
# Idempotent: nothing to do (exit 0) when all three tools are on PATH; without root or
# apt-get it only says so (exit 0), and the lab tests then skip with the reason.
set -euo pipefail
missing=()
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v nft >/dev/null 2>&1 || missing+=(nftables)
command -v conntrack >/dev/null 2>&1 || missing+=(conntrack)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-netlab.sh: no root or no apt-get, not installing ${missing[*]};" \
    "the NAT lab tests will skip" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
