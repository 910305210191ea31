"""Legacy mode (``--auth open``) behaves like the original DarkSwap relay (issue #8).

Each point is checked with :mod:`originalclient`, a client that speaks only the original
JSON protocol and reads every frame as the original's serde enum would:

1. any printable peer id ("peer1", as the original's own tests use) in open mode;
2. the target of a circuit is told with ``RelayRequest`` then ``RelayResponse``;
3. ``DataChannel`` from clients is accepted;
4. a ``RelayData`` above ``max_data_frame`` gets an Error and the circuit stays.

Points 2-4 are tested with PeerId ids, so that each test checks its point alone (and
fails without it); the subprocess test runs all four with the original's "peer1"/"peer2".
Then mixed sessions: darkswap-relay/1 clients next to legacy ones in the same relay.
"""

from __future__ import annotations

import subprocess
from functools import partial

import trio
from originalclient import connect_original
from relayclient import RelayClient, new_peer
from test_cli_subprocess import SERVE, drain, read_line

from darkswap_trio.proto.signaling import (
    CircuitData,
    DataChannel,
    Error,
    Offer,
    Ping,
    Pong,
    Register,
    RelayRequest,
    RelayResponse,
)
from darkswap_trio.testing import running_relay
from darkswap_trio.websocket import open_websocket

UNICODE_ID = "pair ✓ 3 — ünïcødé"
LONGEST_ID = "x" * 128


async def open_circuit(requester, target, *, verbatim: bool = True) -> str:
    """``requester`` asks for a circuit to ``target`` (both original clients): the
    requester's answer, then the original relay's two frames to the target, verbatim.

    ``verbatim=False`` reads whatever announces the circuit to the target (the tests of
    points 3 and 4 check those points alone).
    """
    await requester.send("RelayRequest", from_=requester.peer_id, to=target.peer_id)
    response = await requester.expect("RelayResponse")
    assert response["accepted"] is True and response["error"] is None
    relay_id = response["relay_id"]
    if not verbatim:
        while True:
            kind, payload = await target.recv()
            if kind in ("RelayResponse", "DataChannel") and payload["relay_id"] == relay_id:
                return relay_id
    assert await target.expect_raw() == {
        "type": "RelayRequest",
        "payload": {"from": requester.peer_id, "to": target.peer_id},
    }
    assert await target.expect_raw() == {
        "type": "RelayResponse",
        "payload": {"relay_id": relay_id, "accepted": True, "error": None},
    }
    return relay_id


async def test_any_printable_peer_id_works_everywhere():
    with trio.fail_after(10):
        async with running_relay(auth="open") as server:
            port = server.signaling_port
            async with (
                connect_original(port) as one,
                connect_original(port) as two,
                connect_original(port) as three,
            ):
                await one.register("peer1")
                await two.register("peer2")
                await three.register(UNICODE_ID)
                # Offer / Answer / IceCandidate, to and from ids that are no PeerIds.
                await one.send("Offer", from_="peer1", to="peer2", sdp="v=0\r\n")
                offer = await two.expect("Offer")
                assert (offer["from"], offer["to"], offer["sdp"]) == ("peer1", "peer2", "v=0\r\n")
                await two.send("Answer", from_="peer2", to="peer1", sdp="v=0\r\n")
                assert (await one.expect("Answer"))["from"] == "peer2"
                await three.send(
                    "IceCandidate", from_=UNICODE_ID, to="peer1", candidate="candidate:1",
                    sdp_mid="0", sdp_mline_index=0,
                )  # fmt: skip
                candidate = await one.expect("IceCandidate")
                assert (candidate["from"], candidate["sdp_mline_index"]) == (UNICODE_ID, 0)
                await one.send("Offer", from_="peer1", to="ghost", sdp="x")
                assert (await one.expect_error())["ref"] == "ghost"
                # Someone else's id is still refused as `from`.
                await one.send("Offer", from_="peer2", to="peer2", sdp="x")
                assert (await one.expect_error())["code"] == "spoofed_from"
                # A circuit between two such ids; data carries `from` = the sender's id.
                relay_id = await open_circuit(three, one)
                await three.send_data(relay_id, b"hello")
                assert await one.expect_data() == (UNICODE_ID, relay_id, b"hello")
                await one.send_data(relay_id, b"back")
                assert await three.expect_data() == ("peer1", relay_id, b"back")
                await one.send("CloseRelay", relay_id=relay_id)
                assert (await three.expect("CloseRelay"))["relay_id"] == relay_id
                await two.synchronise()  # nothing reached the bystander
            # Bounds: 128 characters is the longest id; a taken id stays taken.
            async with connect_original(port) as longest, connect_original(port) as twin:
                await longest.register(LONGEST_ID)
                await twin.send("Register", peer_id=LONGEST_ID)
                assert (await twin.expect_error())["code"] == "peer_id_in_use"


async def test_ids_that_are_not_printable_or_too_long_are_refused():
    with trio.fail_after(10):
        async with running_relay(auth="open") as server:
            async with connect_original(server.signaling_port) as client:
                for bad in ["", "x" * 129, "peer\n1", "peer\x001", "tab\there", "a\u2028b"]:
                    await client.send("Register", peer_id=bad)
                    error = await client.expect_error()  # the session goes on
                    assert error["code"] == "bad_frame", (bad, error)
                    await client.send("Ping")
                    await client.expect("Pong")
                await client.register("peer1")  # ... and may still register properly
                await client.send("Offer", from_="peer1", to="peer\x7f2", sdp="x")
                assert (await client.expect_error())["code"] == "bad_frame"
                await client.synchronise()


async def test_ids_stay_peer_ids_outside_legacy_mode():
    with trio.fail_after(10):
        async with running_relay(auth="open") as server:
            async with open_websocket(server.url) as ws:  # darkswap-relay/1 in open mode
                client = RelayClient(ws)
                await client.send(Register(peer_id="peer1", protocol="darkswap-relay/1"))
                await client.expect_error("invalid_peer_id")
        async with running_relay(auth="signature") as server:
            async with connect_original(server.signaling_port) as client:
                await client.send("Register", peer_id="peer1")
                assert (await client.expect_error())["code"] == "invalid_peer_id"
                await client.expect_closed()


async def test_circuit_target_gets_the_original_sequence():
    with trio.fail_after(10):
        async with running_relay(auth="open") as server:
            port = server.signaling_port
            async with connect_original(port) as one, connect_original(port) as two:
                await one.register(str(new_peer().peer_id))
                await two.register(str(new_peer().peer_id))
                relay_id = await open_circuit(one, two)  # checks both frames verbatim
                await one.send_data(relay_id, b"first")
                assert await two.expect_data() == (one.peer_id, relay_id, b"first")
                # The target may use the circuit at once, as the original allowed.
                await two.send_data(relay_id, b"second")
                assert await one.expect_data() == (two.peer_id, relay_id, b"second")


async def test_data_channel_from_clients_is_accepted():
    with trio.fail_after(10):
        async with running_relay(auth="open") as server:
            port = server.signaling_port
            async with connect_original(port) as one, connect_original(port) as two:
                await one.register(str(new_peer().peer_id))
                await two.register(str(new_peer().peer_id))
                relay_id = await open_circuit(one, two, verbatim=False)
                # Both peers announce their channel after the RelayResponse, as original
                # clients do; either end's id is accepted, and nothing is answered.
                for sender, named in ((one, one), (two, two), (two, one)):
                    await sender.send(
                        "DataChannel", peer_id=named.peer_id, relay_id=relay_id, channel="data"
                    )
                await one.synchronise()
                await two.synchronise()
                await one.send_data(relay_id, b"after DataChannel")
                assert (await two.expect_data())[2] == b"after DataChannel"
                # A circuit that is not the sender's, or an id that is no end of it: Error.
                await one.send("DataChannel", peer_id=one.peer_id, relay_id="nope", channel="data")
                error = await one.expect_error()
                assert (error["code"], error["ref"]) == ("unknown_circuit", "nope")
                await one.send("DataChannel", peer_id="peer3", relay_id=relay_id, channel="d")
                error = await one.expect_error()
                assert (error["code"], error["ref"]) == ("unknown_circuit", relay_id)
                await one.synchronise()
                assert server.statistics().circuits == 1


async def test_data_channel_from_extended_clients_is_still_bad_frame():
    with trio.fail_after(10):
        async with running_relay(auth="open") as server:
            async with open_websocket(server.url) as a_ws, open_websocket(server.url) as b_ws:
                a, b = RelayClient(a_ws), RelayClient(b_ws)
                await a.register_extended(new_peer(), server.peer_id, open_mode=True)
                await b.register_extended(new_peer(), server.peer_id, open_mode=True)
                await a.send(RelayRequest(from_=a.peer_id, to=b.peer_id))
                response = await a.expect(RelayResponse)
                await a.send(DataChannel(a.peer_id, response.relay_id, "relay"))
                await a.expect_error("bad_frame")


async def test_oversized_relay_data_gets_an_error_and_the_circuit_stays():
    with trio.fail_after(10):
        async with running_relay(auth="open", circuit_max_data_frame=1024) as server:
            port = server.signaling_port
            async with connect_original(port) as one, connect_original(port) as two:
                await one.register(str(new_peer().peer_id))
                await two.register(str(new_peer().peer_id))
                relay_id = await open_circuit(one, two, verbatim=False)
                await one.send_data(relay_id, b"x" * 1025)
                error = await one.expect_error()
                assert (error["code"], error["ref"]) == ("frame_too_large", relay_id)
                assert "1025" in error["message"]
                await two.synchronise()  # nothing of it reached the other end
                assert server.statistics().circuits == 1
                # The circuit goes on, both ways, and a full-size frame passes.
                await one.send_data(relay_id, b"y" * 1024)
                assert await two.expect_data() == (one.peer_id, relay_id, b"y" * 1024)
                await two.send_data(relay_id, b"z" * 2048)
                assert (await two.expect_error())["code"] == "frame_too_large"
                await two.send_data(relay_id, b"fine")
                assert (await one.expect_data())[2] == b"fine"
                await one.synchronise()


async def test_mixed_legacy_and_extended_sessions():
    """Each side gets what it expects; a /1 peer and a legacy peer whose id is not a
    PeerId are kept apart (incompatible_peer), whoever asks."""
    with trio.fail_after(10):
        async with running_relay(auth="open") as server:
            port = server.signaling_port
            legacy_peer_id = str(new_peer().peer_id)
            async with (
                open_websocket(server.url) as ws,
                connect_original(port) as named,
                connect_original(port) as keyed,
            ):
                ext = RelayClient(ws)
                await ext.register_extended(new_peer(), server.peer_id, open_mode=True)
                await named.register("peer1")
                await keyed.register(legacy_peer_id)

                # /1 -> legacy (PeerId): the /1 requester gets the rich RelayResponse,
                # the legacy target the original sequence.
                await ext.send(RelayRequest(from_=ext.peer_id, to=legacy_peer_id))
                response = await ext.expect(RelayResponse)
                assert response.accepted and response.limits is not None
                assert response.to == legacy_peer_id
                raw_request = await keyed.expect_raw()
                assert raw_request["payload"] == {"from": ext.peer_id, "to": legacy_peer_id}
                raw_response = await keyed.expect_raw()
                assert raw_response["payload"] == {
                    "relay_id": response.relay_id, "accepted": True, "error": None,
                }  # fmt: skip
                await keyed.send_data(response.relay_id, b"to ext")
                got = await ext.expect(CircuitData)
                assert got.payload == b"to ext"

                # legacy (PeerId) -> /1: the /1 target gets DataChannel with limits.
                await keyed.send("RelayRequest", from_=legacy_peer_id, to=ext.peer_id)
                accepted = await keyed.expect("RelayResponse")
                announced = await ext.expect(DataChannel)
                assert announced.relay_id == accepted["relay_id"]
                assert (announced.peer_id, announced.limits) == (legacy_peer_id, response.limits)

                # "peer1" <-> /1: refused both ways, the /1 client never sees "peer1".
                await named.send("RelayRequest", from_="peer1", to=ext.peer_id)
                refused = await named.expect("RelayResponse")
                assert (refused["accepted"], refused["relay_id"]) == (False, "")
                assert refused["code"] == "incompatible_peer" and refused["error"]
                await named.send("Offer", from_="peer1", to=ext.peer_id, sdp="x")
                error = await named.expect_error()
                assert (error["code"], error["ref"]) == ("incompatible_peer", ext.peer_id)
                await ext.send(RelayRequest(from_=ext.peer_id, to="peer1"))
                refused_ext = await ext.expect(RelayResponse)
                assert (refused_ext.accepted, refused_ext.code) == (False, "incompatible_peer")
                assert refused_ext.to == "peer1"
                await ext.send(Offer(from_=ext.peer_id, to="peer1", sdp="x"))
                err = await ext.expect(Error)
                assert (err.code, err.ref) == ("incompatible_peer", "peer1")
                await ext.send(Ping())
                assert isinstance(await ext.recv(), Pong)
                await named.synchronise()
                # "peer1" and the legacy PeerId peer still talk to each other.
                await named.send("Offer", from_="peer1", to=legacy_peer_id, sdp="y")
                assert (await keyed.expect("Offer"))["from"] == "peer1"
                assert server.statistics().circuits == 2
                refusals = server.metrics.value(
                    "darkswap_relay_circuits_refused_total", {"reason": "incompatible_peer"}
                )
                assert refusals == 2


async def test_original_clients_against_python_m_relay():
    """The four points against ``python -m relay --auth open`` (a real process)."""
    stderr = bytearray()
    with trio.fail_after(20):  # process start-up included
        async with trio.open_nursery() as nursery:
            process = await nursery.start(
                partial(
                    trio.run_process,
                    SERVE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    check=False,
                )
            )
            nursery.start_soon(drain, process.stderr, stderr)
            line = (await read_line(process.stdout, bytearray())).decode()
            assert line.startswith("READY "), (line, stderr)
            fields = dict(item.split("=", 1) for item in line.split()[1:])
            port = int(fields["signaling"])
            async with connect_original(port) as one, connect_original(port) as two:
                await one.register("peer1")  # 1. the original's own test ids
                await two.register("peer2")
                await one.send("Offer", from_="peer1", to="peer2", sdp="v=0\r\n")
                assert (await two.expect("Offer"))["from"] == "peer1"
                relay_id = await open_circuit(one, two)  # 2. the original sequence
                for client in (one, two):  # 3. DataChannel accepted
                    await client.send(
                        "DataChannel", peer_id=client.peer_id, relay_id=relay_id, channel="data"
                    )
                    await client.synchronise()
                # 4. above max_data_frame (64 KiB by default): an Error, not a close
                await one.send_data(relay_id, b"x" * (64 * 1024 + 1))
                assert (await one.expect_error())["code"] == "frame_too_large"
                await one.send_data(relay_id, b"still open")
                assert await two.expect_data() == ("peer1", relay_id, b"still open")
                await two.send("CloseRelay", relay_id=relay_id)
                assert (await one.expect("CloseRelay"))["relay_id"] == relay_id
            process.terminate()
            with trio.fail_after(10):
                await process.wait()
    assert process.returncode == 0, bytes(stderr).decode()
