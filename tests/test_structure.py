"""Project-wide rules that are cheap to check mechanically."""

import ast
import importlib
import pathlib
import types

import pytest

import darkswap_trio

ROOT = pathlib.Path(darkswap_trio.__file__).parent
RELAY = ROOT.parent / "relay"


def test_proto_never_imports_trio():
    offenders = []
    for path in (ROOT / "proto").rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "trio" or n.startswith("trio.") or n.startswith("trio_") for n in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_public_exports_resolve():
    for name in dir(darkswap_trio):
        if not name.startswith("_"):
            assert getattr(darkswap_trio, name) is not None


# The public API, pinned: a name added to or dropped from one of these is a decision,
# made here on purpose (trio's test_exports does the same).
EXPORTS = {
    "darkswap_trio": [
        "CircuitClosedError",
        "CircuitCreated",
        "CircuitEnded",
        "CircuitRefused",
        "CircuitStatistics",
        "Config",
        "ConfigError",
        "ConnectionDowngraded",
        "ConnectionMetrics",
        "ConnectionPool",
        "ConnectionUpgraded",
        "DataReceived",
        "DirectConnection",
        "Keypair",
        "LinkInterrupted",
        "LinkRestored",
        "MessageTooLarge",
        "NetworkEvent",
        "NoRelayAvailable",
        "NotStarted",
        "P2PConfig",
        "P2PNetwork",
        "ParseError",
        "PeerConnected",
        "PeerDisconnected",
        "PeerId",
        "PeerIdError",
        "PeerLink",
        "PeerLinkStatistics",
        "PeerNotFound",
        "PeerUnreachable",
        "PoolStatistics",
        "RelayAddress",
        "RelayAuthenticationError",
        "RelayCircuit",
        "RelayError",
        "RelayEvent",
        "RelayManager",
        "RelayManagerConfig",
        "RelayServerState",
        "RelayServerStatus",
        "RelaySession",
        "RelaySessionStatistics",
        "ServerConnected",
        "ServerDisconnected",
        "ServerFailed",
        "UnknownCircuit",
        "WebRtcSignalingClient",
        "WebRtcTransport",
        "WebRtcTransportStatistics",
        "load_or_create_keypair",
        "open_relay_session",
        "parse_peer_id",
        "parse_relay_address",
    ],
    "darkswap_trio.webrtc": [
        "ConnectionFailed",
        "DataChannel",
        "DataChannelStatistics",
        "DtlsCertificate",
        "PeerConnection",
        "PeerConnectionConfig",
        "PeerConnectionStatistics",
        "SignalMessage",
        "SignalingStateError",
        "TcpSignaling",
        "open_peer_connection",
        "open_tcp_signaling",
    ],
    "darkswap_trio.websocket": [
        "WebSocketConnection",
        "WebSocketHandshakeError",
        "WebSocketRejected",
        "WebSocketRequest",
        "WebSocketStatistics",
        "open_websocket",
        "serve_websocket",
    ],
    "darkswap_trio.testing": [
        "CoreLoop",
        "DelayLine",
        "IcePairSimulator",
        "LinkModel",
        "Livelock",
        "Nat",
        "SctpPair",
        "SimulatedLink",
        "SimulatedPeer",
        "VirtualNat",
        "VirtualNet",
        "VirtualNetStatistics",
        "VirtualSocket",
        "blackhole_direct_path",
        "running_relay",
    ],
    "relay": [
        "AuthConfig",
        "ConfigError",
        "LimitsConfig",
        "RelayConfig",
        "RelayServer",
        "RelayStatistics",
        "load_config",
        "serve_relay",
    ],
}


def public_names(module: types.ModuleType) -> list[str]:
    return sorted(
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    )


@pytest.mark.parametrize("module_name", sorted(EXPORTS))
def test_export_lists_are_pinned(module_name):
    module = importlib.import_module(module_name)
    assert public_names(module) == sorted(EXPORTS[module_name])
    if hasattr(module, "__all__"):
        assert sorted(module.__all__) == sorted(EXPORTS[module_name])


def test_public_names_are_not_ambiguous():
    """One meaning per name across the public modules (the SDK's relay status record is
    RelayServerState, relay.RelayServer the running server; one ConfigError family)."""
    import relay

    seen: dict[str, object] = {}
    for module_name in EXPORTS:
        module = importlib.import_module(module_name)
        for name in public_names(module):
            value = getattr(module, name)
            assert seen.setdefault(name, value) is value or name == "ConfigError", name
    assert issubclass(relay.ConfigError, darkswap_trio.ConfigError)


def test_py_typed_ships():
    assert (ROOT / "py.typed").is_file()
    assert (RELAY / "py.typed").is_file()


def _darkswap_imports(path: pathlib.Path) -> list[tuple[str, list[str]]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] == "darkswap_trio":
                found.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names if a.name.split(".")[0] == "darkswap_trio"]
    return found


def test_relay_imports_only_public_sdk_names():
    """The relay server is a client of the SDK's public surface: top-level names, the
    websocket package and the proto packages, never a private module."""
    offenders = []
    for path in sorted(RELAY.rglob("*.py")):
        for module, names in _darkswap_imports(path):
            parts = module.split(".")
            if any(part.startswith("_") for part in parts):
                offenders.append(f"{path.name}: {module}")
            elif module == "darkswap_trio":
                public = set(darkswap_trio.__all__) | {"__version__"}
                offenders += [f"{path.name}: darkswap_trio.{n}" for n in names if n not in public]
            elif parts[1] not in ("websocket", "proto"):
                offenders.append(f"{path.name}: {module}")
    assert offenders == []


def test_no_code_sets_aioice_private_attributes():
    """aioice's Candidate keeps ``_network_host`` in step with ``host`` only through its
    constructor; building candidates with it (proto/ice ``with_address``) keeps that true."""
    offenders = [
        str(path.relative_to(ROOT.parent))
        for path in [*ROOT.rglob("*.py"), *RELAY.rglob("*.py")]
        if "._network_host" in path.read_text()
    ]
    assert offenders == []
