#!/usr/bin/env bash
# Install darkswap-trio into .venv and run the demo: a relay plus two peers on loopback.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
exec .venv/bin/python -m darkswap_trio.demo "$@"
