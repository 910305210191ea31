"""RelaySession robustness: other peers cannot stall our session."""

import trio

from darkswap_trio import Keypair, open_relay_session
from darkswap_trio.proto.signaling import Offer
from darkswap_trio.testing import running_relay


async def test_offer_flood_to_a_session_nobody_reads_signals_from_cannot_stall_it():
    with trio.fail_after(10):
        async with (
            running_relay(messages_per_peer_rate=10_000, messages_per_peer_burst=10_000) as relay,
            open_relay_session(relay.multiaddr, Keypair.generate(), signal_buffer=8) as victim,
            open_relay_session(relay.multiaddr, Keypair.generate()) as flooder,
            open_relay_session(relay.multiaddr, Keypair.generate()) as friend,
        ):
            for i in range(200):
                await flooder.send_signal(
                    Offer(from_=flooder.local_peer_id, to=victim.local_peer_id, sdp=f"v=0 #{i}")
                )
            # Circuits still flow through the victim's session while its signals overflow.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(friend.request_circuit, victim.local_peer_id)
                incoming = await victim.accept_circuit()
            outgoing = friend.circuits[0]
            await outgoing.send(b"still alive")
            assert await incoming.receive() == b"still alive"
            await victim.ping()
            assert victim.dropped_signals > 0
            assert victim.statistics().dropped_signals == victim.dropped_signals
            # What was queued is the oldest signals, intact.
            first = victim.signals.receive_nowait()
            assert first.sdp == "v=0 #0"
