"""The README's SDK snippets are complete programs that run, and its SDK TOML reference
names every Config key with its real default."""

from __future__ import annotations

import dataclasses
import re
import tomllib

from example_processes import ROOT, run

from darkswap_trio import Config, Keypair, P2PConfig, RelayManagerConfig

README = (ROOT / "README.md").read_text()
SECTIONS = [("p2p", P2PConfig), ("relay_manager", RelayManagerConfig)]


def sdk_toml() -> str:
    section = README[README.index("## SDK configuration") :]
    return re.search(r"```toml\n(.*?)```", section, re.S).group(1)


def test_sdk_toml_reference_is_complete_and_loads_with_the_defaults():
    text = sdk_toml().replace("12D3KooW...", str(Keypair.generate().peer_id))
    table = tomllib.loads(text)
    config = Config.from_toml(text)
    for name, cls in SECTIONS:
        assert set(table[name]) == {f.name for f in dataclasses.fields(cls)}, name
        default = cls()
        for key, value in table[name].items():
            if key not in ("relay_servers", "key_file", "stun_servers"):
                assert getattr(default, key) == value == getattr(getattr(config, name), key), key


def test_complete_snippets_run(relay_process, tmp_path):
    """Every README snippet that is a program (it calls trio.run) runs as it is written:
    the quick start's three, the PeerConnection over VirtualNet, PeerConnection and
    WebRtcTransport ones."""
    snippets = re.findall(r"```python\n(.*?)```", README, re.S)
    fragments = [s.splitlines()[0] for s in snippets if "trio.run(" not in s]
    assert len(snippets) >= 6 and not fragments, (
        f"README snippets that are not programs: {fragments}"
    )
    for n, snippet in enumerate(snippets):
        path = tmp_path / f"snippet{n}.py"
        path.write_text(snippet)
        out = run([str(path), relay_process.multiaddr], timeout=60)
        assert re.search(
            r"b'(hello bob|hi|ping|direct|datagram from b|through a NAT|bid 0.1 @ 64000)'|hello on chat",
            out,
        ), out
