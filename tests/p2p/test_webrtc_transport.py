"""Two peers connect directly by PeerId through a real relay's signaling.

Each peer knows only the relay's multiaddr and its own key: Offer, Answer and trickled
IceCandidates travel through the relay, the data channel runs directly over loopback UDP.
"""

import pytest
import trio

from darkswap_trio import Keypair, open_relay_session
from darkswap_trio._p2p._direct import WebRtcSignalingClient, WebRtcTransport
from darkswap_trio.proto import signaling as sig
from darkswap_trio.testing import running_relay
from darkswap_trio.webrtc import PeerConnectionConfig, open_peer_connection

LOOPBACK = PeerConnectionConfig(host_addresses=["127.0.0.1"], include_loopback=True)


async def test_direct_connection_by_peer_id_through_relay_signaling():
    with trio.fail_after(20):
        async with (
            running_relay() as relay,
            open_relay_session(relay.multiaddr, Keypair.generate()) as alice_session,
            open_relay_session(relay.multiaddr, Keypair.generate()) as bob_session,
            WebRtcTransport(alice_session, LOOPBACK) as alice,
            WebRtcTransport(bob_session, LOOPBACK) as bob,
        ):
            to_bob = await alice.connect(bob.local_peer_id)
            from_alice = await bob.accept()
            assert from_alice.peer_id == alice.local_peer_id
            assert to_bob.peer_connection.connection_state == "connected"
            await to_bob.channel.send(b"hello bob, directly")
            assert await from_alice.channel.receive() == b"hello bob, directly"
            await from_alice.channel.send("and back, as text")
            assert await to_bob.channel.receive() == "and back, as text"
            # The relay carried the signaling only: no circuit was opened.
            assert relay.statistics().circuits == 0
            await to_bob.aclose()
            with trio.fail_after(5):
                try:
                    await from_alice.channel.receive()
                    raise AssertionError("expected the channel to end")
                except (trio.EndOfChannel, trio.BrokenResourceError):
                    pass


async def test_simultaneous_offers_settle_on_one_connection():
    with trio.fail_after(20):
        async with (
            running_relay() as relay,
            open_relay_session(relay.multiaddr, Keypair.generate()) as s1,
            open_relay_session(relay.multiaddr, Keypair.generate()) as s2,
            WebRtcTransport(s1, LOOPBACK) as t1,
            WebRtcTransport(s2, LOOPBACK) as t2,
        ):
            results = {}

            async def dial(transport, peer, key):
                results[key] = await transport.connect(peer)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(dial, t1, t2.local_peer_id, 1)
                nursery.start_soon(dial, t2, t1.local_peer_id, 2)
            await results[1].channel.send(b"ping")
            assert await results[2].channel.receive() == b"ping"
            await results[2].channel.send(b"pong")
            assert await results[1].channel.receive() == b"pong"


async def test_signaling_client_exchanges_offer_answer_and_candidates():
    with trio.fail_after(10):
        async with (
            running_relay() as relay,
            open_relay_session(relay.multiaddr, Keypair.generate()) as s1,
            open_relay_session(relay.multiaddr, Keypair.generate()) as s2,
        ):
            a, b = WebRtcSignalingClient(s1), WebRtcSignalingClient(s2)
            await a.send_offer(b.local_peer_id, "v=0 offer")
            await a.send_candidate(b.local_peer_id, "candidate:1 1 udp 1 127.0.0.1 9 typ host")
            await a.send_candidate(b.local_peer_id, None)
            offer, candidate, end = [await b.receive() for _ in range(3)]
            assert (offer.from_, offer.sdp) == (a.local_peer_id, "v=0 offer")
            assert candidate.candidate.endswith("typ host") and candidate.sdp_mid == "0"
            assert end.candidate == ""
            await b.send_answer(a.local_peer_id, "v=0 answer")
            async for signal in a:
                assert (signal.from_, signal.sdp) == (b.local_peer_id, "v=0 answer")
                break


def _without_candidates(sdp: str) -> str:
    lines = sdp.split("\r\n")
    return "\r\n".join(
        line for line in lines if not line.startswith(("a=candidate", "a=end-of-candidates"))
    )


async def test_candidates_that_arrive_before_the_offer_are_kept_for_it():
    """Trickled candidates that overtake their Offer are applied once it arrives.

    Alice's only candidate reaches Bob before her Offer (whose SDP lists none), and
    Alice is never told Bob's candidates: the connection can only form if Bob checks
    the candidate he was sent early, as a browser would.
    """
    with trio.fail_after(20):
        async with (
            running_relay() as relay,
            open_relay_session(relay.multiaddr, Keypair.generate()) as alice_session,
            open_relay_session(relay.multiaddr, Keypair.generate()) as bob_session,
            WebRtcTransport(bob_session, LOOPBACK) as bob,
            open_peer_connection(LOOPBACK) as pc,
        ):
            alice = WebRtcSignalingClient(alice_session)
            offer = _without_candidates(await pc.create_offer())
            sent = 0
            async for candidate in pc.local_candidates():
                await alice.send_candidate(bob.local_peer_id, candidate)
                sent += 1
            assert sent >= 2  # a host candidate and the end-of-candidates
            await alice.send_offer(bob.local_peer_id, offer)
            answer = await alice.receive()
            assert isinstance(answer, sig.Answer)  # Bob trickles only after his Answer
            await pc.set_remote_description(_without_candidates(answer.sdp), "answer")
            await pc.wait_connected()
            channel = await pc.create_data_channel("early")
            from_alice = await bob.accept()
            await channel.send(b"found through an early candidate")
            assert await from_alice.channel.receive() == b"found through an early candidate"
            assert bob.early_candidates == 0 and bob.dropped_signals == 0
            await from_alice.aclose()


async def test_a_failed_attempt_leaves_the_transport_running():
    """ICE failing (here: no candidate pair at all, IPv4 against IPv6) fails one attempt.

    The peer connection reports it from inside its nursery (an ExceptionGroup); it
    must come out of ``connect`` as BrokenResourceError on both sides' attempts and
    leave both transports (and so the network's relayed links) running.
    """
    ipv6_only = PeerConnectionConfig(host_addresses=["::1"], include_loopback=True)
    with trio.fail_after(20):
        async with (
            running_relay() as relay,
            open_relay_session(relay.multiaddr, Keypair.generate()) as s1,
            open_relay_session(relay.multiaddr, Keypair.generate()) as s2,
            WebRtcTransport(s1, LOOPBACK) as alice,
            WebRtcTransport(s2, ipv6_only) as bob,
        ):
            for _ in range(2):  # the second attempt proves both transports survived
                with pytest.raises(trio.BrokenResourceError) as failed:
                    await alice.connect(bob.local_peer_id)
                assert "failed" in str(failed.value)
