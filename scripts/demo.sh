#!/usr/bin/env bash
# Install darkswap-trio (with the relay extra) into .venv and run the demo: a relay plus
# two peers on loopback, a link that opens on the relay and upgrades to direct.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[relay]'  # the demo runs a relay in-process
exec .venv/bin/python -m darkswap_trio.demo "$@"
