"""The SDK imports without the relay extra; the relay says which extra it needs; the
package metadata is what a quiet install needs (SPDX license, LICENSE file)."""

from __future__ import annotations

import subprocess
import sys
import tomllib

from example_processes import ROOT, child_env

RELAY_ONLY = ("h11", "prometheus_client", "jwt")
HIDE = f"import sys\nfor name in {RELAY_ONLY!r}: sys.modules[name] = None  # as if not installed\n"


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=60
    )


def test_sdk_and_cli_import_without_the_relay_extra():
    done = python(
        HIDE + "import darkswap_trio, darkswap_trio._peer_cli, darkswap_trio.demo\n"
        "from darkswap_trio import P2PNetwork\nfrom darkswap_trio.webrtc import open_tcp_signaling\nprint('ok')"
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_relay_without_its_extra_names_it():
    done = python(HIDE + "import relay")
    assert done.returncode == 1
    assert (
        "ImportError: the darkswap relay needs h11, prometheus-client, PyJWT: install the "
        "relay extra with pip install 'darkswap-trio[relay]'"
    ) in done.stderr


def test_metadata_license_and_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and (ROOT / "LICENSE").read_text().startswith("MIT License")
    dependencies = " ".join(project["dependencies"])
    assert not any(name in dependencies for name in ("h11", "prometheus", "PyJWT"))
    relay = " ".join(project["optional-dependencies"]["relay"])
    assert all(name in relay for name in ("h11", "prometheus-client", "PyJWT"))
    # The test extra pulls the relay, its cluster extra (the cluster tests run too) and
    # fast-crypto (libsodium's Ed25519; the OpenSSL fallback is tested beside it).
    assert "darkswap-trio[relay,cluster,fast-crypto]" in project["optional-dependencies"]["test"]
    assert "pynacl" in " ".join(project["optional-dependencies"]["fast-crypto"])
    assert "hiredis" in " ".join(project["optional-dependencies"]["cluster"])
    assert project["scripts"]["darkswap-peer"] == "darkswap_trio._peer_cli:main"


def test_relay_image_installs_the_relay_extra():
    # A bare `pip install .` gives an image whose entry point fails at import (no h11).
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    installs = [line for line in dockerfile.splitlines() if line.startswith("RUN pip install")]
    assert installs and all("'.[relay,fast-crypto]'" in line for line in installs), installs
