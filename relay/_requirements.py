"""Fail with a clear message when the relay's own dependencies are missing.

They come with the ``relay`` extra (``pip install 'darkswap-trio[relay]'``), not with the
SDK; without this check the first symptom would be a bare ModuleNotFoundError deep inside
an import.
"""

import importlib.util

RELAY_REQUIREMENTS = (("h11", "h11"), ("prometheus-client", "prometheus_client"), ("PyJWT", "jwt"))

missing = [name for name, module in RELAY_REQUIREMENTS if importlib.util.find_spec(module) is None]
if missing:
    raise ImportError(
        f"the darkswap relay needs {', '.join(missing)}: install the relay extra "
        "with pip install 'darkswap-trio[relay]'"
    )
