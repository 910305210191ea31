#!/usr/bin/env bash
# The type checks (mypy --strict, pyright) on darkswap_trio and relay; settings in pyproject.toml.
# scripts/test.sh runs this before pytest: any error fails the test command (and CI).
set -uo pipefail
cd "$(dirname "$0")/.."
.venv/bin/python -m pip uninstall -q -y trio-typing 2>/dev/null  # its stubs shadow trio's types
status=0
.venv/bin/mypy || status=1
.venv/bin/pyright --pythonpath .venv/bin/python || status=1
exit $status
