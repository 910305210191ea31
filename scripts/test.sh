#!/usr/bin/env bash
# Install everything the tests need into .venv and run them (the README's test command).
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian's Chromium for the browser interop test (a no-op when present or not root).
scripts/install-browser.sh || echo "WARNING: Chromium install failed; browser interop tests will skip" >&2
# iproute2, nftables and conntrack for the NAT lab (tests/netlab; a no-op when present or not root).
scripts/install-netlab.sh || echo "WARNING: NAT lab tools install failed; tests/netlab will skip" >&2
# Debian's coturn: turnserver and turnutils_uclient, the third-party TURN server and client the
# TURN tests run against ours (a no-op when present or not root).
scripts/install-coturn.sh || echo "WARNING: coturn install failed; coturn interop tests will skip" >&2
# Debian's redis-server for the relay cluster tests (a no-op when present or not root).
scripts/install-redis.sh || echo "WARNING: redis-server install failed; relay cluster tests will skip" >&2
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
# multiaddr requires trio-typing but never imports it; its trio-stubs/outcome-stubs predate
# trio's own inline types and would shadow them for mypy and pyright.
.venv/bin/python -m pip uninstall -q -y trio-typing
.venv/bin/ruff check darkswap_trio relay tests benchmarks examples
.venv/bin/ruff format --check darkswap_trio relay tests benchmarks examples
# mypy (strict) and pyright, settings in pyproject.toml: a type error fails the run before the tests.
scripts/typecheck.sh
exec .venv/bin/python -m pytest "$@"
