"""TURN servers for peer-connection tests: our relay (``serve_relay`` with TURN) in
this process, or coturn's ``turnserver`` as a subprocess; both on loopback, REST
API credentials, loopback peers allowed (tests only)."""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
from aioice import stun

from darkswap_trio.proto.turn import rest_api_credentials
from darkswap_trio.webrtc import TurnServerConfig

SECRET = b"turn-ice-client-test-secret"
REALM = "darkswap.test"
TURNSERVER = shutil.which("turnserver")


def turn_config(port: int, peer_id: str = "alice", transport: str = "udp") -> TurnServerConfig:
    username, password = rest_api_credentials(SECRET, peer_id, 3600, time.time())
    return TurnServerConfig(f"turn:127.0.0.1:{port}?transport={transport}", username, password)


@asynccontextmanager
async def running_our_turn(tmp_path: Any) -> AsyncIterator[Any]:
    """``serve_relay`` with TURN on its STUN port; yields the server handle."""
    from relay import RelayConfig, serve_relay

    secret_file = tmp_path / "turn_secret"
    secret_file.write_bytes(SECRET + b"\n")
    config = RelayConfig(host="127.0.0.1", port=0, stun_port=0, metrics_port=None)
    config.auth.mode = "open"
    config.turn.enabled = True
    config.turn.realm = REALM
    config.turn.secret_file = str(secret_file)
    config.turn.allow_loopback_peers = True
    config.turn.bandwidth_per_allocation = 0
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_relay, config.validate())
        try:
            yield server
        finally:
            nursery.cancel_scope.cancel()


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _answers_binding(port: int) -> bool:
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        await sock.bind(("127.0.0.1", 0))
        message = stun.Message(stun.Method.BINDING, stun.Class.REQUEST, os.urandom(12))
        try:
            await sock.sendto(bytes(message), ("127.0.0.1", port))
        except OSError:
            return False
        with trio.move_on_after(0.2):
            try:
                await sock.recvfrom(2048)
            except OSError:
                return False
            return True
    return False


@asynccontextmanager
async def running_coturn(tmp_path: Any) -> AsyncIterator[int]:
    """coturn on a free loopback port with ``use-auth-secret``; yields the port."""
    assert TURNSERVER is not None
    port = _free_udp_port()
    command = [
        TURNSERVER, "-n",
        "--listening-ip", "127.0.0.1", "-p", str(port), "--relay-ip", "127.0.0.1",
        "--use-auth-secret", "--static-auth-secret", SECRET.decode(), "--realm", REALM,
        "--allow-loopback-peers", "--no-tls", "--no-dtls", "--no-cli",
        "--no-stdout-log", "--log-file", str(tmp_path / "coturn.log"),
        "--min-port", "41000", "--max-port", "41999",
        "--pidfile", str(tmp_path / "coturn.pid"),
    ]  # fmt: skip
    async with trio.open_nursery() as nursery:
        process = await nursery.start(trio.run_process, command)
        try:
            for _ in range(50):
                if await _answers_binding(port):
                    break
            else:
                raise RuntimeError("coturn did not start: " + _log(tmp_path))
            yield port
        finally:
            process.terminate()
            nursery.cancel_scope.cancel()


def _log(tmp_path: Any) -> str:
    try:
        return (tmp_path / "coturn.log").read_text()[-2000:]
    except OSError:
        return "(no log)"
