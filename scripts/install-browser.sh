#!/usr/bin/env bash
# Install Debian's Chromium for tests/interop/test_browser_chromium.py. Idempotent.
# Nothing to do (exit 0) when a Chromium is already on PATH; without root or apt-get it
# only says so (exit 0): the browser tests then skip with a reason.
set -euo pipefail
for name in chromium chromium-browser google-chrome-stable google-chrome; do
  if command -v "$name" >/dev/null 2>&1; then
    exit 0
  fi
done
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-browser.sh: no root or no apt-get, not installing Chromium;" \
    "the browser interop tests will skip" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends chromium
