"""Hostile input on a live session: seeded random frames (JSON-ish, garbage, binary)
never crash the session or the server; every reply is a well-formed frame, never
``internal_error``, and both the fuzzing peer and its circuit partner keep working."""

from __future__ import annotations

import base64
import json
import random
import uuid

import pytest
import trio
from relayclient import connect, make_config, new_peer

from darkswap_trio.proto.signaling import (
    _FIELDS,
    Error,
    Ping,
    Pong,
    RelayRequest,
    RelayResponse,
    decode_binary_untrusted,
    decode_message_untrusted,
)
from relay import serve_relay

TYPES = [cls.__name__ for cls in _FIELDS] + ["Bogus", ""]
KEYS = sorted({spec[0] for specs in _FIELDS.values() for spec in specs}) + ["x"]


def random_value(rng: random.Random, ids: list[str], depth: int = 0):
    pick = rng.randrange(9 if depth < 2 else 7)
    if pick == 0:
        return rng.choice(ids)
    if pick == 1:
        return rng.choice(["", "AAAA", "=", "not base64!", "x" * rng.randrange(300)])
    if pick == 2:
        return rng.choice([0, -1, 1 << 70, 3.5, float("1e308")])
    if pick == 3:
        return rng.choice([True, False, None])
    if pick == 4:
        return str(uuid.UUID(int=rng.getrandbits(128)))
    if pick == 5:
        return "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(20)))
    if pick == 6:
        return rng.choice(ids[:1]) if ids else ""
    if pick == 7:
        return [random_value(rng, ids, depth + 1) for _ in range(rng.randrange(3))]
    return {rng.choice(KEYS): random_value(rng, ids, depth + 1) for _ in range(rng.randrange(4))}


def typed_value(rng: random.Random, kind: str, ids: list[str], relay_texts: list[str]):
    """A well-typed field value (as the codec's field table describes it)."""
    if kind in ("id", "rid"):
        return rng.choice(ids + relay_texts)
    if kind == "str":
        return rng.choice(["", "v=0\r\n", "relay", "x" * rng.randrange(100)])
    if kind == "b64":
        return base64.b64encode(rng.randbytes(rng.choice([0, 3, 64, 1000]))).decode()
    if kind == "nonce":
        return base64.b64encode(rng.randbytes(32)).decode()
    if kind == "number":
        return rng.choice([0, 1.5, 1e12])
    if kind == "int":
        return rng.randrange(3)
    if kind == "bool":
        return rng.random() < 0.5
    return {"window": rng.randrange(10), "duration": 1}


def random_frame(rng: random.Random, ids: list[str], relay_ids: list[bytes]) -> str | bytes:
    kind = rng.randrange(10)
    relay_texts = [str(uuid.UUID(bytes=r)) for r in relay_ids]
    if kind < 6:
        cls = rng.choice(list(_FIELDS))
        payload = {}
        for key, _attr, field_kind, required, _ in _FIELDS[cls]:
            if not required and rng.random() < 0.3:
                continue
            if rng.random() < 0.9:
                payload[key] = typed_value(rng, field_kind, ids, relay_texts)
            else:
                payload[key] = random_value(rng, ids)
        if "from" in payload and rng.random() < 0.6:
            payload["from"] = ids[0]
        obj: dict = {"type": cls.__name__, "payload": payload}
        if rng.random() < 0.1:
            obj["type"] = rng.choice(TYPES)
        return json.dumps(obj)
    if kind == 6:
        return "".join(chr(rng.randrange(1, 0x800)) for _ in range(rng.randrange(50)))
    rid = rng.choice(relay_ids + [rng.randbytes(16)])
    head = bytes([rng.choice([1, 1, 2, 2, 0, 3, 255])])
    body = rng.randbytes(rng.choice([0, 1, 4, 5, 100, 70_000]))
    return (head + rid + body)[: rng.choice([1, 10, 17, 21, 100_000, 100_000])]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_frames_never_crash_the_session(nursery, seed):
    rng = random.Random(seed)
    with trio.fail_after(20):
        config = make_config(messages_per_peer_rate=0, bytes_per_peer_rate=0)
        server = await nursery.start(serve_relay, config)
        async with connect(server) as fuzzer, connect(server) as partner:
            await fuzzer.register_extended(new_peer(), server.peer_id, open_mode=True)
            await partner.register_legacy(str(new_peer().peer_id))
            await fuzzer.send(RelayRequest(from_=fuzzer.peer_id, to=partner.peer_id))
            resp = await fuzzer.expect(RelayResponse)
            await partner.expect_circuit_announcement(fuzzer.peer_id)
            ids = [fuzzer.peer_id, partner.peer_id, str(new_peer().peer_id), "bad id"]
            relay_ids = [uuid.UUID(resp.relay_id).bytes]
            sentinel = str(new_peer().peer_id)
            replies: list = []

            async def drain_partner():
                while True:  # whatever reaches the partner must be well formed too
                    frame = await partner.ws.receive()
                    assert isinstance(frame, str)
                    decode_message_untrusted(frame)

            async with trio.open_nursery() as inner:
                inner.start_soon(drain_partner)

                async def read_replies():
                    while True:
                        frame = await fuzzer.ws.receive()
                        msg = (
                            decode_message_untrusted(frame)
                            if isinstance(frame, str)
                            else decode_binary_untrusted(frame)
                        )
                        replies.append(msg)
                        if isinstance(msg, RelayResponse) and msg.to == sentinel:
                            return

                async with trio.open_nursery() as reading:
                    reading.start_soon(read_replies)
                    for _ in range(300):
                        await fuzzer.send_raw(random_frame(rng, ids, relay_ids))
                    await fuzzer.send(RelayRequest(from_=fuzzer.peer_id, to=sentinel))
                errors = [m for m in replies if isinstance(m, Error)]
                assert errors, "hostile input must get Error replies"
                assert not [e for e in errors if e.code == "internal_error"], errors
                # Both sessions are still fine.
                await fuzzer.send(Ping())
                while not isinstance(await fuzzer.recv(), Pong):
                    pass
                inner.cancel_scope.cancel()
            await partner.send(Ping())
            while not isinstance(await partner.recv(), Pong):
                pass
            assert server.statistics().registered_peers == 2
        await server.shutdown(1)
