"""An in-process relay server for tests: ``async with running_relay() as server``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import trio

from .._identity import Keypair


@asynccontextmanager
async def running_relay(
    *,
    port: int = 0,
    keypair: Keypair | None = None,
    auth: Literal["signature", "jwt", "open"] = "signature",  # relay.AuthMode
    stun: bool = False,
    metrics: bool = False,
    jwt_key: str | None = None,
    jwt_algorithm: str = "EdDSA",
    **limits: Any,
) -> AsyncIterator[Any]:
    """Start ``relay.serve_relay`` on 127.0.0.1 (free ports) and shut it down afterwards.

    ``limits`` are LimitsConfig fields; ``jwt_key`` (a public key PEM or HS256 secret) is
    needed with ``auth="jwt"``. Yields the server handle (``multiaddr``,
    ``signaling_port``, ``statistics()``, ``shutdown()``...).
    """
    from relay import AuthConfig, LimitsConfig, RelayConfig, serve_relay

    config = RelayConfig(
        host="127.0.0.1",
        port=port,
        stun_port=0 if stun else None,
        metrics_port=0 if metrics else None,
        auth=AuthConfig(mode=auth, jwt_key=jwt_key, jwt_algorithm=jwt_algorithm),
        limits=LimitsConfig(**limits),
    )

    async def serve(task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_relay(config, keypair=keypair, task_status=task_status)

    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve)
        try:
            yield server
        finally:
            with trio.CancelScope(shield=True):
                with trio.move_on_after(2):
                    await server.shutdown(0.5)
                nursery.cancel_scope.cancel()
