"""PeerConnection (the production driver and core) on VirtualNet: NATs, loss, STUN,
consent, failure and close, in simulated time."""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest
import trio

from darkswap_trio.proto.errors import StunParseError
from darkswap_trio.proto.stun import Class, binding_success_response, parse_stun_untrusted
from darkswap_trio.testing import VirtualNet
from darkswap_trio.webrtc import PeerConnectionConfig, open_peer_connection

STUN_ADDR = ("198.51.100.1", 3478)
CONE = ("address-and-port-dependent", "endpoint-independent")
FULL_CONE = ("endpoint-independent", "endpoint-independent")
SYMMETRIC = ("address-and-port-dependent", "address-and-port-dependent")


async def serve_stun(sock, *, task_status=trio.TASK_STATUS_IGNORED):
    """A minimal STUN binding service, as the relay's."""
    task_status.started()
    while True:
        data, addr = await sock.recvfrom(2048)
        try:
            request = parse_stun_untrusted(data)
        except StunParseError:
            continue
        if request.message_class == Class.REQUEST:
            await sock.sendto(binding_success_response(request, addr[:2]), addr)


async def trickle(source, sink, delay: float = 0.0) -> None:
    await trio.sleep(delay)  # simulated signaling latency
    async for candidate in source.local_candidates():
        sink.add_ice_candidate(candidate)


async def connect(a, b, b_to_a_delay: float = 0.0) -> None:
    """Offer from a, answer from b, candidates trickled both ways; until both are up
    (BrokenResourceError if ICE fails)."""
    await b.set_remote_description(await a.create_offer(), "offer")
    answer = await b.create_answer()
    failure = None
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle, a, b)
        nursery.start_soon(trickle, b, a, b_to_a_delay)
        await a.set_remote_description(answer, "answer")
        try:
            await a.wait_connected()
            await b.wait_connected()
        except trio.BrokenResourceError as exc:
            failure = exc  # raised below, not as an exception group
        nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure


async def selected_remote(pc):
    """The nominated pair's remote address (DTLS does not wait for the nomination)."""
    while (remote := pc.statistics().ice.selected_remote) is None:
        await trio.sleep(0.0001)
    return remote


@asynccontextmanager
async def pcs(sock_a, sock_b, config_a=None, config_b=None):
    async with (
        open_peer_connection(config_a, datagram_socket=sock_a) as a,
        open_peer_connection(config_b, datagram_socket=sock_b) as b,
    ):
        yield a, b
    sock_a.close()
    sock_b.close()


async def exchange(a, b, count: int = 20) -> None:
    """Reliable, ordered messages both ways on one channel."""
    channel = await a.create_data_channel("data")
    incoming = await b.accept_data_channel()
    for i in range(count):
        await channel.send(b"a%d" % i)
        await incoming.send(b"b%d" % i)
    assert [await incoming.receive() for _ in range(count)] == [b"a%d" % i for i in range(count)]
    assert [await channel.receive() for _ in range(count)] == [b"b%d" % i for i in range(count)]


async def test_lossy_path_through_a_nat_with_srflx(autojump_clock):
    """The production stack behind a NAT on a lossy, duplicating, reordering network:
    a server-reflexive candidate from STUN, and every message once, in order."""
    net = VirtualNet(seed=7, loss=0.2, duplicate=0.1, jitter=0.03)
    stun_sock = await net.bind(STUN_ADDR)
    nat = net.add_nat("203.0.113.5")
    stun = PeerConnectionConfig(stun_servers=[STUN_ADDR])
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_stun, stun_sock)
            inside = await nat.bind(("192.168.1.10", 0))
            async with pcs(inside, await net.bind(("198.51.100.20", 0)), stun, stun) as (a, b):
                await connect(a, b)
                # b only reaches a through a's NAT mapping (srflx or prflx).
                assert await selected_remote(b) == nat.mapping(inside.getsockname())
                types = {c.split()[7] async for c in a.local_candidates() if c}
                assert types == {"host", "srflx"}
                await exchange(a, b, count=50)
            nursery.cancel_scope.cancel()
    assert net.statistics().lost > 0 and net.statistics().duplicated > 0


async def test_consent_lost_breaks_the_channels(autojump_clock):
    net = VirtualNet(seed=1)
    with trio.fail_after(200):
        async with pcs(await net.bind(("10.0.0.1", 0)), await net.bind(("10.0.0.2", 0))) as (
            a,
            b,
        ):
            await connect(a, b)
            channel = await a.create_data_channel("x")
            await b.accept_data_channel()
            await trio.sleep(1)  # the nomination reached b: consent runs on both ends
            net.link.loss = 1.0  # the path goes silent
            started = trio.current_time()
            with pytest.raises(trio.BrokenResourceError) as info:
                await channel.receive()
            assert 20 <= trio.current_time() - started <= 31
            assert "ICE" in str(info.value.__cause__)
            with pytest.raises(trio.BrokenResourceError):
                await channel.send(b"x")
            assert a.connection_state == "failed"


async def test_close_is_prompt_while_connecting(autojump_clock):
    net = VirtualNet()
    sock = await net.bind(("10.0.0.1", 0))
    with trio.fail_after(5):
        async with open_peer_connection(datagram_socket=sock) as a:
            await a.create_offer()
            with trio.move_on_after(1) as scope:
                await a.wait_connected()  # no peer: waits until cancelled
            assert scope.cancelled_caught
        with pytest.raises(trio.BrokenResourceError):
            await a.wait_connected()
        assert a.connection_state == "closed"


async def test_failed_ice_raises_broken(autojump_clock):
    net = VirtualNet(loss=1.0)
    with trio.fail_after(120):
        async with pcs(await net.bind(("10.0.0.1", 0)), await net.bind(("10.0.0.2", 0))) as (
            a,
            b,
        ):
            with pytest.raises(trio.BrokenResourceError) as info:
                await connect(a, b)
            assert "ICE failed" in str(info.value.__cause__)
            assert a.connection_state == "failed"


async def test_cancelled_body_closes_promptly(autojump_clock):
    net = VirtualNet()
    sock = await net.bind(("10.0.0.1", 0))
    started = trio.current_time()
    with trio.move_on_after(3):
        async with open_peer_connection(datagram_socket=sock) as pc:
            await pc.create_offer()
            await trio.sleep_forever()
    assert trio.current_time() - started == pytest.approx(3)
    sock.close()


async def _between_nats(
    nat_a_kind, nat_b_kind, *, seed=4, delay=0.005, b_to_a_delay=0.0, race=False
):
    """(connected, seconds to the nomination or the failure, a's selected remote, b's NAT)."""
    net = VirtualNet(seed=seed, delay=delay, jitter=0.01 if delay > 0.002 else 0.0)
    stun_sock = await net.bind(STUN_ADDR)
    nat_a = net.add_nat("203.0.113.1", *nat_a_kind, conntrack_race=race)
    nat_b = net.add_nat("203.0.113.2", *nat_b_kind)
    stun = PeerConnectionConfig(stun_servers=[STUN_ADDR])
    connected, remote = True, None
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_stun, stun_sock)
        # The same private address on both networks: only the NATs' mappings work.
        inside_a = await nat_a.bind(("192.168.1.10", 0))
        inside_b = await nat_b.bind(("192.168.1.10", 0))
        with trio.fail_after(60):
            async with pcs(inside_a, inside_b, stun, stun) as (a, b):
                started = trio.current_time()
                try:
                    await connect(a, b, b_to_a_delay)
                except trio.BrokenResourceError:
                    connected = False
                if connected:
                    remote = await selected_remote(a)
                elapsed = trio.current_time() - started  # to the nomination, or the failure
                if connected:
                    await exchange(a, b, count=3)
        nursery.cancel_scope.cancel()
    return connected, elapsed, remote, nat_b


@pytest.mark.parametrize(
    ("nat_kind", "expect_direct"), [(CONE, True), (FULL_CONE, True), (SYMMETRIC, False)]
)
async def test_both_peers_behind_nats(autojump_clock, nat_kind, expect_direct):
    connected, _, remote, nat_b = await _between_nats(nat_kind, nat_kind)
    # Hole punching through both NATs works unless the mapping changes per destination:
    # that is what the relay path is for.
    assert connected is expect_direct
    if connected:
        assert remote[0] == nat_b.public_ip  # through b's NAT mapping, not its host address


@pytest.mark.parametrize(("race", "expect_direct"), [(False, True), (True, False)])
async def test_ice_through_a_racy_port_restricted_nat(autojump_clock, race, expect_direct):
    """Port-restricted cones on both sides: the conntrack race alone turns direct into
    relay. b's trickled candidates reach a a second late, so b's checks reach a's NAT
    before a sends anything to b (the order the race needs)."""
    connected, *_ = await _between_nats(
        ("address-and-port-dependent", "endpoint-independent"),
        CONE,
        b_to_a_delay=1.0,
        race=race,
    )
    assert connected is expect_direct


async def test_dead_better_pair_does_not_hold_nomination_for_long(autojump_clock):
    """The host pair (private addresses behind two NATs) never answers; the srflx pair
    works within a millisecond. Nomination waits a few round trips (at least
    NOMINATION_PATIENCE), not the whole NOMINATION_DELAY (0.5 s)."""
    connected, elapsed, *_ = await _between_nats(FULL_CONE, FULL_CONE, delay=0.001)
    assert connected
    assert elapsed < 0.2


async def test_check_in_progress_is_resent_when_the_peer_checks_us(autojump_clock):
    """Port-restricted cones: a's first check dies at b's NAT (b has not sent to a yet).
    When b's check arrives, a resends at once instead of at its next RTO (0.5 s)."""
    connected, elapsed, *_ = await _between_nats(CONE, CONE, delay=0.001, b_to_a_delay=0.1)
    assert connected
    assert elapsed < 0.35


async def test_hopeless_checklist_fails_in_seconds(autojump_clock):
    """Symmetric NATs on both sides: every pair fails, ICE says so within ~5 s of the
    last check (requests at 0, 0.5, 1.5, 3.5 s; failure at 4.5 s), not after 39.5 s."""
    connected, elapsed, *_ = await _between_nats(SYMMETRIC, SYMMETRIC, delay=0.001)
    assert not connected
    assert 4.0 < elapsed < 6.0


async def _nomination_time(pacing: float) -> tuple[float, float, float]:
    """Seconds to a selected pair, and the Ta each agent took from the descriptions."""
    net = VirtualNet(0, delay=0.0005)
    config = PeerConnectionConfig(ice_pacing=pacing)
    with trio.fail_after(5):
        async with pcs(
            await net.bind(("10.0.0.1", 0)), await net.bind(("10.0.0.2", 0)), config, config
        ) as (a, b):
            started = trio.current_time()
            await connect(a, b)
            await selected_remote(a)
            elapsed = trio.current_time() - started
            return elapsed, a._core.ice.pacing, b._core.ice.pacing


async def test_agreed_pacing_reaches_the_agents_and_nomination_does_not_wait_for_it(
    autojump_clock,
):
    """Ta reaches both agents through SDP (a=ice-pacing); it paces ordinary checks only,
    so the nominating check follows the first check by MIN_TA whatever Ta is (see
    tests/proto/ice: test_nomination_and_triggered_checks_do_not_wait_for_ta)."""
    slow, fast = await _nomination_time(0.05), await _nomination_time(0.005)
    assert slow[1:] == (0.05, 0.05) and fast[1:] == (0.005, 0.005)
    assert slow[0] == pytest.approx(fast[0], abs=0.002)


async def test_new_channel_lost_twice_opens_well_before_three_seconds(autojump_clock):
    """A direct link's data channel on a fresh association: its DCEP OPEN and the first
    retransmission lost. SCTP knows the RTT from its handshake, so the OPEN is resent
    at RTO.Min rather than at RTO.Initial (1 s) and then 2 s later: the channel opens
    well before a PeerLink's 3 s path timeout (the lossy NAT lab test's flake)."""
    net = VirtualNet(seed=3, delay=0.005)
    with trio.fail_after(60):
        async with pcs(await net.bind(("10.0.0.1", 0)), await net.bind(("10.0.0.2", 0))) as (
            a,
            b,
        ):
            await connect(a, b)
            async with trio.open_nursery() as nursery:
                net.link.loss = 1.0  # the OPEN, and what is resent in the next 1.1 s
                channel = await a.create_data_channel("direct")
                opened = trio.current_time()

                async def restore() -> None:
                    await trio.sleep(1.1)
                    net.link.loss = 0.0

                nursery.start_soon(restore)
                incoming = await b.accept_data_channel()
                assert trio.current_time() - opened < 2.0  # was 3.0 (1 s, then 2 s)
                await channel.send(b"hello")
                assert await incoming.receive() == b"hello"
