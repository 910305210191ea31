"""Apply a parsed TOML table onto nested config dataclasses, with errors naming the key.

Public (``darkswap_trio.apply_settings``): the relay loads its own config with it.
"""

from __future__ import annotations

import dataclasses
from typing import Any


def apply_settings(
    obj: Any, table: dict[str, Any], error: type[Exception], where: str = ""
) -> None:
    """Set ``obj``'s fields from ``table``; unknown keys and wrong types raise ``error``."""
    known = {f.name for f in dataclasses.fields(obj)}
    for key, value in table.items():
        if key not in known:
            raise error(f"unknown setting {where}{key}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise error(f"{where}{key} must be a table")
            apply_settings(current, value, error, f"{where}{key}.")
            continue
        if isinstance(current, bool):
            ok = isinstance(value, bool)
        elif isinstance(current, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif isinstance(current, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(current, list):
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif current is None:  # optional setting: take any scalar, validate() checks it
            ok = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, str)
        if not ok:
            raise error(f"{where}{key} has the wrong type: {value!r}")
        setattr(obj, key, value)
