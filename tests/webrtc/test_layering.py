"""The WebRTC layers import one way: channels -> nothing of the driver; driver -> core;
the peer core -> the protocol cores (checked with ast, TYPE_CHECKING blocks aside)."""

from __future__ import annotations

import ast
import pathlib

import darkswap_trio

ROOT = pathlib.Path(darkswap_trio.__file__).parent


def _imports(path: pathlib.Path) -> set[str]:
    """Modules ``path`` imports at run time, as dotted names under darkswap_trio."""
    package = ".".join(("darkswap_trio", *path.relative_to(ROOT).parent.parts))
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    skipped = {
        id(child)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for child in ast.walk(node)
    }
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("darkswap_trio")}


def _graph(packages: list[str]) -> dict[str, set[str]]:
    modules = {}
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(("darkswap_trio", *parts)).removesuffix(".__init__")
            modules[name] = path
    return {name: _imports(path) & set(modules) for name, path in modules.items()}


def test_no_import_cycle_in_the_webrtc_layers():
    graph = _graph(["webrtc", "proto/peer"])
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in graph[node]:
            if state.get(target) == 1 and not node.endswith("__init__"):
                raise AssertionError(f"import cycle: {' -> '.join([*stack, node, target])}")
            if target not in state:
                visit(target, [*stack, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_data_channels_know_their_owner_only_as_an_interface():
    imports = _imports(ROOT / "webrtc" / "_datachannel.py")
    assert not {m for m in imports if m.startswith("darkswap_trio.webrtc")}


def test_the_peer_core_is_sans_io():
    for path in (ROOT / "proto" / "peer").rglob("*.py"):
        text = path.read_text()
        assert "import trio" not in text and "import socket" not in text, path
