"""Project-wide rules that are cheap to check mechanically."""

import ast
import pathlib

import darkswap_trio

ROOT = pathlib.Path(darkswap_trio.__file__).parent


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
