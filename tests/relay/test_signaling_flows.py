"""The original DarkSwap flows through a real relay (legacy JSON clients, open auth), the
same with darkswap-relay/1 clients (binary DATA/CREDIT), and mixed legacy<->extended."""

from __future__ import annotations

import json
import uuid

import trio
from relayclient import connect, make_config, new_peer, raw_upgrade

from darkswap_trio.proto.signaling import (
    Answer,
    CircuitCredit,
    CircuitData,
    CloseRelay,
    DataChannel,
    IceCandidate,
    Offer,
    Ping,
    Pong,
    RelayData,
    RelayRequest,
    RelayResponse,
)
from relay import serve_relay


async def test_legacy_clients_original_flows(nursery):
    with trio.fail_after(10):
        server = await nursery.start(serve_relay, make_config())
        a_id, b_id = str(new_peer().peer_id), str(new_peer().peer_id)
        async with connect(server) as a, connect(server) as b:
            reg = await a.register_legacy(a_id)
            assert reg.peer_id == a_id and reg.relay_peer_id == server.peer_id
            assert reg.auth == "open" and reg.protocol is None
            await b.register_legacy(b_id)

            # Signaling is forwarded unchanged.
            offer = Offer(from_=a_id, to=b_id, sdp="v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n")
            await a.send(offer)
            assert await b.expect(Offer) == offer
            answer = Answer(from_=b_id, to=a_id, sdp="v=0\r\n")
            await b.send(answer)
            assert await a.expect(Answer) == answer
            cand = IceCandidate(
                from_=a_id,
                to=b_id,
                candidate="candidate:1 1 UDP 1 1.2.3.4 5 typ host",
                sdp_mid="0",
                sdp_mline_index=0,
            )
            await a.send(cand)
            assert await b.expect(IceCandidate) == cand
            # The original relay's null-valued optional fields survive.
            await a.send_raw(
                json.dumps(
                    {
                        "type": "IceCandidate",
                        "payload": {
                            "from": a_id,
                            "to": b_id,
                            "candidate": "c",
                            "sdp_mid": None,
                            "sdp_mline_index": None,
                        },
                    }
                )
            )
            raw = await b.ws.receive()
            assert '"sdp_mid":null' in raw and '"sdp_mline_index":null' in raw

            await a.send(Ping())
            await a.expect(Pong)

            # Circuit: request, accepted response; the legacy target is told as the
            # original relay told it (RelayRequest, then RelayResponse).
            await a.send(RelayRequest(from_=a_id, to=b_id))
            resp = await a.expect(RelayResponse)
            assert resp.accepted and resp.error is None and resp.to == b_id
            assert str(uuid.UUID(resp.relay_id)) == resp.relay_id
            assert resp.limits is not None and resp.limits.window == 16 * 1024 * 1024
            assert await b.expect_circuit_announcement(a_id) == resp.relay_id

            # RelayData both ways (base64 JSON), `from` is the sender.
            await a.send(RelayData(from_=a_id, relay_id=resp.relay_id, data=b"hello"))
            got = await b.expect(RelayData)
            assert (got.from_, got.relay_id, got.data) == (a_id, resp.relay_id, b"hello")
            await b.send(RelayData(from_=b_id, relay_id=resp.relay_id, data=b"\x00\xffworld"))
            got = await a.expect(RelayData)
            assert (got.from_, got.data) == (b_id, b"\x00\xffworld")

            # More than a window in small messages: the relay grants legacy credit itself.
            payload = bytes(range(256)) * 256  # 64 KiB
            for _ in range(6):
                await a.send(RelayData(from_=a_id, relay_id=resp.relay_id, data=payload))
            for _ in range(6):
                assert (await b.expect(RelayData)).data == payload

            # CloseRelay reaches the other end; the closer gets a confirmation.
            await a.send(CloseRelay(relay_id=resp.relay_id))
            assert await a.expect(CloseRelay) == CloseRelay(resp.relay_id, "closed")
            assert await b.expect(CloseRelay) == CloseRelay(resp.relay_id, "closed_by_peer")
            assert server.statistics().circuits == 0

            # Data after close: unknown circuit.
            await b.send(RelayData(from_=b_id, relay_id=resp.relay_id, data=b"late"))
            await b.expect_error("unknown_circuit")
        await server.shutdown(1)


async def test_extended_clients_binary_data_and_credit(nursery):
    with trio.fail_after(10):
        config = make_config(circuit_window=64 * 1024, circuit_max_data_frame=16 * 1024)
        config.auth.mode = "signature"
        server = await nursery.start(serve_relay, config)
        ka, kb = new_peer(), new_peer()
        async with connect(server) as a, connect(server) as b:
            reg = await a.register_extended(ka, server.peer_id)
            assert reg.auth == "signature" and reg.protocol == "darkswap-relay/1"
            await b.register_extended(kb, server.peer_id)
            a_id, b_id = a.peer_id, b.peer_id

            await a.send(Offer(from_=a_id, to=b_id, sdp="x"))
            assert (await b.expect(Offer)).from_ == a_id

            await b.send(RelayRequest(from_=b_id, to=a_id))
            resp = await b.expect(RelayResponse)
            assert resp.accepted
            dc = await a.expect(DataChannel)
            assert dc.peer_id == b_id and dc.limits == resp.limits
            rid = uuid.UUID(resp.relay_id).bytes

            # A full window from b to a, then a returns credit and b may send more.
            chunk = b"z" * (16 * 1024)
            for _ in range(4):
                await b.send_data(rid, chunk)
            for _ in range(4):
                got = await a.expect(CircuitData)
                assert got == CircuitData(rid, chunk)
            await a.send_credit(rid, 32 * 1024)
            assert await b.expect(CircuitCredit) == CircuitCredit(rid, 32 * 1024)
            await b.send_data(rid, chunk)
            assert (await a.expect(CircuitData)).payload == chunk
            # Over-granting is clamped to the window.
            await a.send_credit(rid, 1 << 30)
            assert await b.expect(CircuitCredit) == CircuitCredit(rid, 16 * 1024 + 32 * 1024)

            await a.send_data(rid, b"reply")
            assert await b.expect(CircuitData) == CircuitData(rid, b"reply")

            await b.send(CloseRelay(relay_id=resp.relay_id))
            assert (await b.expect(CloseRelay)).reason == "closed"
            assert (await a.expect(CloseRelay)).reason == "closed_by_peer"
        await server.shutdown(1)


async def test_legacy_to_extended_circuit(nursery):
    with trio.fail_after(10):
        config = make_config(circuit_window=32 * 1024, circuit_max_data_frame=8 * 1024)
        server = await nursery.start(serve_relay, config)
        legacy_id = str(new_peer().peer_id)
        kx = new_peer()
        async with connect(server) as legacy, connect(server) as ext:
            await legacy.register_legacy(legacy_id)
            reg = await ext.register_extended(kx, server.peer_id, open_mode=True)
            assert reg.auth == "open"
            await legacy.send(RelayRequest(from_=legacy_id, to=ext.peer_id))
            resp = await legacy.expect(RelayResponse)
            await ext.expect(DataChannel)
            rid = uuid.UUID(resp.relay_id).bytes

            # legacy -> extended: base64 RelayData becomes a binary DATA frame.
            await legacy.send(RelayData(from_=legacy_id, relay_id=resp.relay_id, data=b"abc"))
            assert await ext.expect(CircuitData) == CircuitData(rid, b"abc")
            # extended -> legacy: binary DATA becomes RelayData; the relay credits ext itself.
            await ext.send_data(rid, b"x" * 8192)
            got = await legacy.expect(RelayData)
            assert got.data == b"x" * 8192 and got.from_ == ext.peer_id
            assert await ext.expect(CircuitCredit) == CircuitCredit(rid, 8192)

            # The legacy sender exceeds its window: the relay stops reading it (no error)
            # until the extended receiver returns credit.
            block = b"y" * 8192
            for _ in range(5):  # 3 bytes already in flight + 40 KiB > 32 KiB window
                await legacy.send(RelayData(from_=legacy_id, relay_id=resp.relay_id, data=block))
            for _ in range(3):
                assert (await ext.expect(CircuitData)).payload == block
            # The 4th needs credit (3 + 4*8192 > 32 KiB): without waiting the relay would
            # have closed the circuit with credit_exceeded.
            await ext.send_credit(rid, 4)
            assert (await ext.expect(CircuitData)).payload == block
            await ext.send_credit(rid, 8192)
            assert (await ext.expect(CircuitData)).payload == block

            await ext.send(CloseRelay(relay_id=resp.relay_id))
            assert (await legacy.expect(CloseRelay)).reason == "closed_by_peer"
        await server.shutdown(1)


async def test_unknown_peer_path_and_bad_frames(nursery):
    with trio.fail_after(10):
        server = await nursery.start(serve_relay, make_config())
        status, _ = await raw_upgrade(server.signaling_port, "/other")
        assert status == 404
        a_id, ghost = str(new_peer().peer_id), str(new_peer().peer_id)
        async with connect(server) as a:
            await a.send(Offer(from_=a_id, to=ghost, sdp="x"))
            await a.expect_error("not_registered")
            await a.register_legacy(a_id)
            await a.send(Offer(from_=a_id, to=ghost, sdp="x"))
            err = await a.expect_error("unknown_peer")
            assert err.ref == ghost
            await a.send(RelayRequest(from_=a_id, to=ghost))
            resp = await a.expect(RelayResponse)
            assert (resp.accepted, resp.relay_id, resp.code) == (False, "", "unknown_peer")
            await a.send(RelayRequest(from_=a_id, to=a_id))
            assert (await a.expect(RelayResponse)).code == "self_circuit"
            await a.send_raw("{not json")
            await a.expect_error("bad_frame")
            await a.send_raw('{"type":"Teleport","payload":{}}')
            await a.expect_error("unknown_type")
            await a.send_raw(b"\x01" + b"\x00" * 16)  # binary from a legacy session
            await a.expect_error("bad_frame")
            await a.send(Ping())
            await a.expect(Pong)  # the session survived all of it
        await server.shutdown(1)


def _self_signed_cert(directory) -> tuple[str, str]:
    from darkswap_trio.testing._tls import SelfSignedCertificate

    return SelfSignedCertificate.generate("relay.test").write(directory)


async def test_tls_signaling(nursery, tmp_path):
    import ssl

    from relayclient import RelayClient

    from darkswap_trio.websocket import open_websocket

    cert, key = _self_signed_cert(tmp_path)
    config = make_config()
    config.auth.mode = "signature"
    config.tls_cert, config.tls_key = cert, key
    with trio.fail_after(10):
        server = await nursery.start(serve_relay, config)
        assert "/tls/ws/p2p/" in server.multiaddr
        assert server.url.startswith("wss://127.0.0.1:")
        # The SDK maps the advertised multiaddr back to the same URL and relay id.
        from darkswap_trio import parse_relay_address

        address = parse_relay_address(server.multiaddr)
        assert (address.url, str(address.peer_id)) == (server.url, server.peer_id)
        ctx = ssl.create_default_context(cafile=cert)
        async with open_websocket(server.url, ssl_context=ctx) as ws:
            client = RelayClient(ws)
            reg = await client.register_extended(new_peer(), server.peer_id)
            assert reg.auth == "signature"
            await client.send(Ping())
            await client.expect(Pong)
        await server.shutdown(1)


async def test_disconnect_tells_the_other_end(nursery):
    with trio.fail_after(10):
        server = await nursery.start(serve_relay, make_config())
        async with connect(server) as a:
            await a.register_legacy(str(new_peer().peer_id))
            async with connect(server) as b:
                await b.register_extended(new_peer(), server.peer_id, open_mode=True)
                await b.send(RelayRequest(from_=b.peer_id, to=a.peer_id))
                resp = await b.expect(RelayResponse)
                assert await a.expect_circuit_announcement(b.peer_id) == resp.relay_id
                b_id = b.peer_id
            # b is gone: a is told, and b's id is free again.
            assert await a.expect(CloseRelay) == CloseRelay(resp.relay_id, "peer_disconnected")
            assert server.statistics().circuits == 0
            await a.send(Offer(from_=a.peer_id, to=b_id, sdp="x"))
            await a.expect_error("unknown_peer")
            assert server.statistics().registered_peers == 1
        await server.shutdown(1)
