"""A client that speaks only the original DarkSwap relay protocol (legacy mode tests).

It shares no code with the project: frames are built as plain JSON objects, the WebSocket
is trio-websocket's, and every frame received is checked the way the original Rust
client's ``serde_json::from_str::<SignalingMessage>`` would read it (``#[serde(tag =
"type", content = "payload")]``: a known variant, every non-``Option`` field present
with its JSON type, ``Option`` fields null or absent, unknown fields ignored).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

STR, BOOL, INT = (str,), (bool,), (int,)
OPT_STR, OPT_INT = (str, type(None)), (int, type(None))

# The original relay's SignalingMessage enum: variant -> {field: accepted JSON types}.
ORIGINAL_MESSAGES: dict[str, dict[str, tuple[type, ...]] | None] = {
    "Register": {"peer_id": STR},
    "Offer": {"from": STR, "to": STR, "sdp": STR},
    "Answer": {"from": STR, "to": STR, "sdp": STR},
    "IceCandidate": {
        "from": STR, "to": STR, "candidate": STR, "sdp_mid": OPT_STR, "sdp_mline_index": OPT_INT,
    },
    "RelayRequest": {"from": STR, "to": STR},
    "RelayResponse": {"relay_id": STR, "accepted": BOOL, "error": OPT_STR},
    "DataChannel": {"peer_id": STR, "relay_id": STR, "channel": STR},
    "RelayData": {"from": STR, "relay_id": STR, "data": STR},
    "CloseRelay": {"relay_id": STR},
    "Error": {"message": STR},
    "Ping": None,
    "Pong": None,
}  # fmt: skip


def parse_as_original(text: str) -> tuple[str, dict[str, Any]]:
    """(type, payload) of a frame the original client can read; AssertionError otherwise."""
    frame = json.loads(text)
    kind = frame["type"]
    assert kind in ORIGINAL_MESSAGES, f"the original protocol has no {kind!r}: {text}"
    fields = ORIGINAL_MESSAGES[kind]
    if fields is None:
        return kind, {}
    payload = frame["payload"]
    for name, types in fields.items():
        value = payload.get(name)
        if type(None) not in types:
            assert name in payload, f"{kind} lacks {name!r}: {text}"
        # (a JSON true is no integer for serde, though Python's bool is an int)
        assert isinstance(value, types) and isinstance(value, bool) == (bool in types), (
            f"{kind}.{name} has the wrong JSON type: {text}"
        )
    return kind, payload


def frame(kind: str, **payload: Any) -> str:
    """An original frame; ``from_`` is written ``from``."""
    if "from_" in payload:
        payload["from"] = payload.pop("from_")
    return json.dumps({"type": kind, "payload": payload} if payload else {"type": kind})


class OriginalClient:
    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws
        self.peer_id = ""

    async def send(self, kind: str, **payload: Any) -> None:
        await self.ws.send_message(frame(kind, **payload))

    async def recv(self) -> tuple[str, dict[str, Any]]:
        return parse_as_original(await self.ws.get_message())

    async def expect(self, kind: str) -> dict[str, Any]:
        got, payload = await self.recv()
        assert got == kind, f"expected {kind}, got {got} {payload}"
        return payload

    async def expect_error(self) -> dict[str, Any]:
        """The next frame is an Error; its payload (``message``, and the relay's ``code``
        and ``ref``, extra fields the original client does not read)."""
        return await self.expect("Error")

    async def expect_raw(self) -> dict[str, Any]:
        """The next frame exactly as sent (json), after checking the original can read it."""
        text = await self.ws.get_message()
        parse_as_original(text)
        return json.loads(text)

    async def register(self, peer_id: str) -> None:
        """Register as the original client does. The relay's ``Registered`` acknowledgement
        (PROTOCOL.md 10: the one frame the original never sent, which its clients log and
        ignore) is read here, so the registration is known to be complete."""
        self.peer_id = peer_id
        await self.send("Register", peer_id=peer_id)
        text = await self.ws.get_message()
        assert json.loads(text)["type"] == "Registered", text

    async def send_data(self, relay_id: str, data: bytes) -> None:
        encoded = base64.b64encode(data).decode()
        await self.send("RelayData", from_=self.peer_id, relay_id=relay_id, data=encoded)

    async def expect_data(self) -> tuple[str, str, bytes]:
        """(from, relay_id, data) of the next RelayData."""
        payload = await self.expect("RelayData")
        return payload["from"], payload["relay_id"], base64.b64decode(payload["data"])

    async def synchronise(self) -> None:
        """Ping, and require Pong as the next frame: nothing was sent to us meanwhile."""
        await self.send("Ping")
        kind, payload = await self.recv()
        assert kind == "Pong", (kind, payload)

    async def expect_closed(self) -> None:
        try:
            while True:
                await self.ws.get_message()
        except ConnectionClosed:
            return


@asynccontextmanager
async def connect_original(port: int) -> AsyncIterator[OriginalClient]:
    async with open_websocket_url(f"ws://127.0.0.1:{port}/signaling") as ws:
        yield OriginalClient(ws)
