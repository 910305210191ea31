"""The TURN client core stepped against the TURN server core in simulated time: the
credential dance, stale nonces, refreshes, permissions, channels, data both ways,
losses, and the free on close. No sockets, no clock."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from turn_client import REALM, SECRET, UNIX_OFFSET, make_server

from darkswap_trio.proto.turn import (
    Allocated,
    AllocationClosed,
    AllocationEnded,
    AllocationFailed,
    AllocationRequested,
    PeerData,
    PermissionFailed,
    StreamDeframer,
    ToClient,
    ToPeer,
    TurnClient,
    TurnClientSettings,
    rest_api_credentials,
)

SERVER = ("198.51.100.1", 3478)
CLIENT = ("203.0.113.7", 40000)
PEER = ("8.8.8.8", 5000)  # global: the server's default policy relays to it
PEER2 = ("1.1.1.1", 6000)


class Pair:
    """A client core and a server core joined by a link that can drop datagrams."""

    def __init__(
        self, *, stream: bool = False, password: str | None = None, **server: object
    ) -> None:
        self.server = make_server(**server)
        username, good = rest_api_credentials(SECRET, "alice", 86400, UNIX_OFFSET)
        settings = TurnClientSettings(SERVER, username, password or good, stream=stream)
        self.client = TurnClient(settings, rng=random.Random(7))
        self.key = ("tcp" if stream else "udp", CLIENT)
        self.now = 0.0
        self.to_peer: list[ToPeer] = []
        self.events: list[object] = []
        self.server_events: list[object] = []
        self.frames_to_client: list[bytes] = []
        self.drop_to_server = 0
        self.drop_to_client = 0

    def pump(self) -> None:
        for _ in range(1000):
            moved = False
            while (data := self.client.poll_transmit()) is not None:
                moved = True
                if self.drop_to_server:
                    self.drop_to_server -= 1
                    continue
                self.server.receive(self.key, data, self.now)
            while (event := self.server.poll_event()) is not None:
                moved = True
                if isinstance(event, AllocationRequested):
                    relayed = ("198.51.100.1", 50000 + event.allocation_id)
                    self.server.allocation_bound(event.allocation_id, relayed, self.now)
                else:
                    self.server_events.append(event)
            while (out := self.server.poll_transmit()) is not None:
                moved = True
                if isinstance(out, ToPeer):
                    self.to_peer.append(out)
                    continue
                assert isinstance(out, ToClient) and out.client == self.key
                if self.drop_to_client:
                    self.drop_to_client -= 1
                    continue
                self.frames_to_client.append(out.data)
                frames = StreamDeframer().feed(out.data) if self.key[0] == "tcp" else [out.data]
                for frame in frames:
                    assert self.client.receive(frame, self.now)
            while (event := self.client.poll_event()) is not None:
                moved = True
                self.events.append(event)
            if not moved:
                return
        raise AssertionError("livelock")

    def run_until(self, end: float) -> None:
        for _ in range(100000):
            deadlines = [d for d in (self.client.poll_timeout(), self.server.poll_timeout()) if d]
            nxt = min(deadlines, default=None)
            if nxt is None or nxt > end:
                break
            self.now = max(self.now, nxt)
            self.client.handle_timeout(self.now)
            self.server.handle_timeout(self.now)
            self.pump()
        self.now = end

    def allocate(self) -> Allocated:
        self.client.allocate(self.now)
        self.pump()
        allocated = [e for e in self.events if isinstance(e, Allocated)]
        assert allocated, self.events
        return allocated[0]

    def peer_sends(self, peer: tuple[str, int], data: bytes) -> None:
        self.server.receive_from_peer(1, peer, data, self.now)
        self.pump()

    def received(self) -> list[PeerData]:
        return [e for e in self.events if isinstance(e, PeerData)]


def test_allocate_answers_the_challenge_and_reports_the_addresses() -> None:
    pair = Pair()
    allocated = pair.allocate()
    assert allocated.relayed == ("198.51.100.1", 50001)
    assert allocated.mapped == CLIENT
    assert allocated.lifetime == 600
    assert pair.client.state == "allocated"
    assert pair.server.counters["response_401"] == 1


def test_wrong_credentials_fail_the_allocation() -> None:
    pair = Pair(password="not-the-password")
    pair.client.allocate(0.0)
    pair.pump()
    assert pair.events == [AllocationFailed("error 401", 401)]
    assert pair.client.state == "failed"


def test_unanswered_allocate_fails_after_the_retransmissions() -> None:
    pair = Pair()
    pair.drop_to_server = 100
    pair.client.allocate(0.0)
    pair.pump()
    pair.run_until(60.0)
    assert pair.events == [AllocationFailed("no answer from the TURN server", None)]


def test_a_lost_request_is_retransmitted() -> None:
    pair = Pair()
    pair.drop_to_server = 2  # the unsigned Allocate, then the signed one
    pair.client.allocate(0.0)
    pair.pump()
    pair.run_until(5.0)
    assert any(isinstance(e, Allocated) for e in pair.events)


def test_data_waits_for_the_permission_then_moves_to_a_channel() -> None:
    pair = Pair()
    pair.allocate()
    assert pair.client.send(PEER, b"first", pair.now) is False  # CreatePermission first
    assert pair.to_peer == []
    pair.pump()
    assert [t.data for t in pair.to_peer] == [b"first"]
    assert pair.client.has_permission(PEER[0])
    assert pair.client.send(PEER, b"second", pair.now) is True  # Send indication + ChannelBind
    pair.pump()
    assert pair.server.statistics().channels == 1
    before = len(pair.frames_to_client)
    pair.client.send(PEER, b"third", pair.now)
    pair.pump()
    assert [t.data for t in pair.to_peer] == [b"first", b"second", b"third"]
    assert all(t.peer == PEER for t in pair.to_peer)
    pair.peer_sends(PEER, b"back")
    assert pair.frames_to_client[before:][-1][0] & 0xC0 == 0x40  # ChannelData
    assert pair.received() == [PeerData(PEER, b"back")]


def test_data_indications_reach_the_client_before_a_channel() -> None:
    pair = Pair()
    pair.allocate()
    pair.client.permit(PEER2[0], pair.now)
    pair.pump()
    pair.peer_sends(PEER2, b"hello")
    assert pair.received() == [PeerData(PEER2, b"hello")]
    assert pair.frames_to_client[-1][0] == 0x00  # a STUN Data indication


def test_refreshes_keep_allocation_permission_and_channel_while_used() -> None:
    pair = Pair()
    pair.allocate()
    pair.client.send(PEER, b"x", pair.now)
    pair.pump()
    for step in range(1, 41):  # 2,000 s of traffic every 50 s: beyond every lifetime
        pair.run_until(step * 50.0)
        pair.client.send(PEER, b"x", pair.now)
        pair.pump()
    stats = pair.server.statistics()
    assert (stats.allocations, stats.permissions, stats.channels) == (1, 1, 1)
    assert len(pair.to_peer) == 41
    assert not any(isinstance(e, AllocationClosed) for e in pair.server_events)
    pair.peer_sends(PEER, b"still here")
    assert pair.received()[-1] == PeerData(PEER, b"still here")


def test_unused_permissions_lapse_but_the_allocation_stays() -> None:
    pair = Pair()
    pair.allocate()
    pair.client.send(PEER, b"x", pair.now)
    pair.pump()
    pair.run_until(1000.0)
    assert pair.server.statistics().allocations == 1
    assert not pair.client.has_permission(PEER[0])
    pair.peer_sends(PEER, b"lapsed")  # the server's permission lapsed too
    assert pair.received() == []
    pair.client.send(PEER, b"again", pair.now)  # a new permission is asked for
    pair.pump()
    assert pair.to_peer[-1].data == b"again"


def test_stale_nonce_is_retried_with_the_new_nonce() -> None:
    pair = Pair(nonce_lifetime=30.0)
    pair.allocate()
    pair.run_until(100.0)  # the nonce is stale now
    pair.client.send(PEER, b"late", pair.now)
    pair.pump()
    assert pair.server.counters["response_438"] >= 1
    assert [t.data for t in pair.to_peer] == [b"late"]


def test_a_denied_peer_reports_permission_failed() -> None:
    pair = Pair()
    pair.allocate()
    pair.client.send(("10.0.0.1", 9), b"private", pair.now)
    pair.pump()
    assert PermissionFailed("10.0.0.1", 403) in pair.events
    assert pair.to_peer == []


def test_close_frees_the_allocation() -> None:
    pair = Pair()
    pair.allocate()
    pair.client.close(pair.now)
    pair.pump()
    assert pair.client.state == "closed"
    assert pair.server.statistics().allocations == 0
    assert [e.reason for e in pair.server_events if isinstance(e, AllocationClosed)] == ["deleted"]
    assert pair.client.poll_timeout() is None


def test_a_forgotten_allocation_ends() -> None:
    pair = Pair(default_lifetime=600, max_lifetime=600)
    pair.allocate()
    pair.drop_to_server = 10**6  # nothing reaches the server any more
    pair.run_until(700.0)
    assert AllocationEnded("the allocation expired") in pair.events


@pytest.mark.parametrize("stream", [False, True], ids=["udp", "tcp"])
def test_both_transports_relay_both_ways(stream: bool) -> None:
    pair = Pair(stream=stream)
    pair.allocate()
    for i in range(5):
        pair.client.send(PEER, b"ping%d" % i, pair.now)
        pair.pump()
        pair.peer_sends(PEER, b"pong%d" % i)
    assert [t.data for t in pair.to_peer] == [b"ping%d" % i for i in range(5)]
    assert [e.data for e in pair.received()] == [b"pong%d" % i for i in range(5)]


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="username"):
        TurnClientSettings(SERVER, "", "pw")
    with pytest.raises(ValueError, match="port"):
        TurnClientSettings(("198.51.100.1", 0), "u", "pw")


@given(st.binary(max_size=200))
def test_any_bytes_from_the_server_raise_nothing(data: bytes) -> None:
    pair = Pair()
    pair.allocate()
    pair.client.send(PEER, b"x", pair.now)
    pair.pump()
    pair.client.receive(data, pair.now)
    pair.client.receive(b"\x40\x00" + data, pair.now)  # ChannelData framing
    pair.client.handle_timeout(pair.now)


@given(st.lists(st.booleans(), min_size=1, max_size=60), st.integers(0, 2**32 - 1))
def test_lossy_link_still_allocates_and_relays(losses: list[bool], seed: int) -> None:
    """Datagrams are lost both ways by a seeded pattern: the client still allocates
    and its data reaches the peer while the losses last, once they stop."""
    pair = Pair()
    rng = random.Random(seed)
    pattern = iter(losses)

    def lossy() -> None:
        pair.drop_to_server = int(next(pattern, False))
        pair.drop_to_client = int(next(pattern, False) and rng.random() < 0.5)

    pair.client.allocate(0.0)
    for step in range(1, 200):
        lossy()
        pair.pump()
        pair.run_until(step * 0.5)
        if pair.client.state == "allocated":
            break
    if pair.client.state != "allocated":
        assert any(isinstance(e, AllocationFailed) for e in pair.events)
        return
    pair.drop_to_server = pair.drop_to_client = 0
    pair.client.send(PEER, b"through", pair.now)
    pair.pump()
    pair.run_until(pair.now + 10.0)
    assert b"through" in [t.data for t in pair.to_peer]


def test_realm_is_learned_from_the_server() -> None:
    pair = Pair()
    pair.allocate()
    assert pair.client._realm == REALM


def test_closed_while_allocating_frees_what_the_server_grants() -> None:
    pair = Pair()
    pair.client.allocate(0.0)
    unsigned = pair.client.poll_transmit()
    assert unsigned is not None
    pair.server.receive(pair.key, unsigned, 0.0)  # the 401 comes back...
    pair.client.close(0.0)  # ...after the client gave up on the allocation
    while (out := pair.server.poll_transmit()) is not None:
        pair.client.receive(out.data, 0.0)
    pair.pump()  # the signed Allocate, granted, then freed
    assert pair.server.counters["allocations_created"] == 1
    assert pair.server.statistics().allocations == 0
    assert pair.client.state == "closed" and not pair.events
