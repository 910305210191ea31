"""Test-side relay client: raw frames over a real loopback WebSocket.

Deliberately low level (the SDK's RelayManager is tested elsewhere): each helper does one
protocol step and asserts what the relay must answer, so tests read like PROTOCOL.md.
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio

from darkswap_trio import Keypair, PeerId
from darkswap_trio.proto.signaling import (
    PROTOCOL_VERSION,
    Authenticate,
    Challenge,
    CircuitCredit,
    CircuitData,
    DataChannel,
    Message,
    Register,
    Registered,
    RelayRequest,
    RelayResponse,
    decode_binary_untrusted,
    decode_message_untrusted,
    encode_circuit_credit,
    encode_circuit_data,
    encode_message,
    peer_auth_message,
    relay_auth_message,
)
from darkswap_trio.websocket import WebSocketConnection, open_websocket
from relay import RelayConfig

T = TypeVar("T")
Frame = Message | CircuitData | CircuitCredit


def make_config(**limits: Any) -> RelayConfig:
    """Loopback, every port 0, open auth unless changed; ``limits`` override LimitsConfig."""
    config = RelayConfig(host="127.0.0.1", port=0, stun_port=0, metrics_port=0)
    config.auth.mode = "open"
    for key, value in limits.items():
        setattr(config.limits, key, value)
    return config


class RelayClient:
    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.peer_id: str | None = None
        self.keypair: Keypair | None = None
        self.extended = False  # registered with darkswap-relay/1

    async def send(self, msg: Message) -> None:
        await self.ws.send(encode_message(msg))

    async def send_raw(self, frame: str | bytes) -> None:
        await self.ws.send(frame)

    async def send_data(self, relay_id: bytes, payload: bytes) -> None:
        await self.ws.send(encode_circuit_data(relay_id, payload))

    async def send_credit(self, relay_id: bytes, increment: int) -> None:
        await self.ws.send(encode_circuit_credit(relay_id, increment))

    async def recv(self) -> Frame:
        frame = await self.ws.receive()
        if isinstance(frame, str):
            return decode_message_untrusted(frame)
        return decode_binary_untrusted(frame)

    async def expect(self, cls: type[T]) -> T:
        frame = await self.recv()
        assert isinstance(frame, cls), f"expected {cls.__name__}, got {frame!r}"
        return frame

    async def expect_error(self, code: str) -> Any:
        from darkswap_trio.proto.signaling import Error

        err = await self.expect(Error)
        assert err.code == code, err
        return err

    async def expect_circuit_announcement(self, requester: str) -> str:
        """What tells this client (the target) that ``requester`` opened a circuit to it;
        returns the relay id. darkswap-relay/1: ``DataChannel``; legacy: the original
        relay's ``RelayRequest{from, to}`` then ``RelayResponse{relay_id, accepted, error}``."""
        if self.extended:
            announced = await self.expect(DataChannel)
            assert (announced.peer_id, announced.channel) == (requester, "relay"), announced
            return announced.relay_id
        assert await self.expect(RelayRequest) == RelayRequest(from_=requester, to=self.peer_id)
        response = await self.expect(RelayResponse)
        assert response == RelayResponse(relay_id=response.relay_id, accepted=True), response
        return response.relay_id

    async def expect_closed(self) -> int | None:
        """Read until the relay closes the connection; return the close code."""
        try:
            while True:
                await self.ws.receive()
        except (trio.EndOfChannel, trio.BrokenResourceError):
            return self.ws.close_code

    # -- registration ---------------------------------------------------------------

    async def register_legacy(self, peer_id: str) -> Registered:
        self.peer_id = peer_id
        await self.send(Register(peer_id=peer_id))
        return await self.expect(Registered)

    async def register_extended(
        self,
        keypair: Keypair,
        relay_peer_id: str,
        *,
        token: str | None = None,
        open_mode: bool = False,
    ) -> Registered:
        """The full darkswap-relay/1 handshake, verifying the relay's proof of identity."""
        self.keypair = keypair
        self.peer_id = str(keypair.peer_id)
        self.extended = True
        nonce = os.urandom(32)
        await self.send(Register(peer_id=self.peer_id, protocol=PROTOCOL_VERSION, nonce=nonce))
        if open_mode:
            reg = await self.expect(Registered)
            assert reg.signature is not None
            assert PeerId.from_string(relay_peer_id).verify(
                relay_auth_message(nonce, relay_peer_id, self.peer_id), reg.signature
            )
            return reg
        challenge = await self.expect(Challenge)
        assert challenge.relay_peer_id == relay_peer_id
        assert challenge.signature is not None
        assert PeerId.from_string(relay_peer_id).verify(
            relay_auth_message(nonce, relay_peer_id, self.peer_id), challenge.signature
        )
        signature = keypair.sign(peer_auth_message(challenge.nonce, relay_peer_id, self.peer_id))
        await self.send(Authenticate(signature=signature, token=token))
        return await self.expect(Registered)


@asynccontextmanager
async def connect(server: Any, path: str = "/signaling") -> AsyncIterator[RelayClient]:
    url = f"ws://127.0.0.1:{server.signaling_port}{path}"
    async with open_websocket(url, max_message_size=4 << 20) as ws:
        yield RelayClient(ws)


async def raw_upgrade(port: int, path: str = "/signaling") -> tuple[int, bytes]:
    """Send a WebSocket upgrade by hand; return (HTTP status, body) of a refusal."""
    key = base64.b64encode(os.urandom(16)).decode()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        data = b""
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            data += chunk
            if data.startswith(b"HTTP/1.1 101"):
                break
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body


def new_peer() -> Keypair:
    return Keypair.generate()
