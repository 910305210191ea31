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
        "NoTopicPeers",
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
        "TopicMessage",
        "TopicSubscription",
        "TurnCredentials",
        "TurnUnavailable",
        "UnknownCircuit",
        "WebRtcSignalingClient",
        "WebRtcTransport",
        "WebRtcTransportStatistics",
        "apply_settings",
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
        "TurnServerConfig",
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
    # dir(), not vars(): darkswap_trio loads most of its names on first use (PEP 562).
    return sorted(
        name
        for name in dir(module)
        if not name.startswith("_") and not isinstance(getattr(module, name), types.ModuleType)
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


# -- module size ------------------------------------------------------------------------

MAX_MODULE_LINES = 600  # issue #11: a module is split by concept before it grows past this


def test_no_module_over_600_lines():
    offenders = [
        f"{path.relative_to(ROOT.parent)}: {lines}"
        for top in ("darkswap_trio", "relay", "tests", "benchmarks", "examples")
        for path in sorted((ROOT.parent / top).rglob("*.py"))
        if (lines := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    ]
    assert offenders == []


# -- import cycles ----------------------------------------------------------------------


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, type_checking: bool) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement, at module level or in functions; those under
    ``if TYPE_CHECKING:`` (for annotations; they never run) only if ``type_checking``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and not type_checking and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph(package_dir: pathlib.Path, *, type_checking: bool = False) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports (relative imports resolved);
    with ``type_checking``, imports under ``if TYPE_CHECKING:`` count too.

    ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to
    ``pkg``. Importing ``a.b.c`` also runs ``a`` and ``a.b``; those implicit edges to
    parent packages are left out (as import checkers usually do): they would make every
    package whose ``__init__`` re-exports its modules one big cycle.
    """
    root = package_dir.name
    files: dict[str, pathlib.Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = (root, *path.relative_to(package_dir).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    graph: dict[str, set[str]] = {module: set() for module in files}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in _imports(ast.parse(path.read_text(), str(path)), type_checking):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    full = ".".join([*base, *([node.module] if node.module else [])])
                else:
                    full = node.module or ""
                targets = [
                    f"{full}.{alias.name}" if f"{full}.{alias.name}" in files else full
                    for alias in node.names
                ]
            graph[module].update(t for t in targets if t in files and t != module)
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return sorted(cycles)


PACKAGE_DIRS = {"relay": ROOT.parent / "relay", "darkswap_trio": ROOT}


# "runtime": a cycle that can break an import. "annotations": modules that also name each
# other's types (under TYPE_CHECKING) still depend both ways; neither package has one.
@pytest.mark.parametrize(
    ("package", "type_checking"),
    [
        pytest.param("relay", False, id="relay-runtime"),
        pytest.param("relay", True, id="relay-annotations"),
        pytest.param("darkswap_trio", False, id="darkswap_trio-runtime"),
        pytest.param("darkswap_trio", True, id="darkswap_trio-annotations"),
    ],
)
def test_no_import_cycles(package, type_checking):
    graph = import_graph(PACKAGE_DIRS[package], type_checking=type_checking)
    assert import_cycles(graph) == []


def test_import_graph_sees_cycles(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from ._a import A\n")
    (pkg / "_a.py").write_text("from . import _b\nA = 1\n")
    (pkg / "_b.py").write_text("def f():\n    from .sub.c import C\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "c.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ..  import _b\n"
        "else:\n    import pkg._a\n"
        "C = 1\n"
    )
    (pkg / "_d.py").write_text(
        "import typing\nif typing.TYPE_CHECKING:\n    from pkg import _a\nfrom ._a import A\n"
    )
    graph = import_graph(pkg)
    assert graph == {
        "pkg": {"pkg._a"},
        "pkg._a": {"pkg._b"},
        "pkg._b": {"pkg.sub.c"},
        "pkg.sub": set(),
        "pkg.sub.c": {"pkg._a"},
        "pkg._d": {"pkg._a"},
    }
    assert import_cycles(graph) == [["pkg._a", "pkg._b", "pkg.sub.c"]]
    annotated = import_graph(pkg, type_checking=True)
    assert annotated["pkg.sub.c"] == {"pkg._a", "pkg._b"}
    assert annotated["pkg._d"] == {"pkg._a"}
