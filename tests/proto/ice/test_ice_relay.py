"""Relay candidates: ICE agents gathering from a TURN server core on the simulated
network (no sockets, simulated time): relay-only pairs, symmetric NATs on both sides,
a lossy link, data through the allocation, allocations freed on close."""

from __future__ import annotations

import random
from functools import partial

import pytest

from darkswap_trio.proto.ice import CandidateGathered, GatheringComplete, IceAgent, IceState
from darkswap_trio.proto.ice._events import DataReceived
from darkswap_trio.proto.turn import (
    AllocationRequested,
    ToClient,
    ToPeer,
    TurnClientSettings,
    TurnServer,
    TurnServerSettings,
    canonical_peer_ip,
    rest_api_credentials,
)
from darkswap_trio.testing._ice_pair import IcePairSimulator, LinkModel, SimulatedPeer
from darkswap_trio.testing._link import Nat

SECRET = b"ice-relay-secret"
UNIX = 1_800_000_000.0
TURN_ADDR = ("203.0.113.100", 3478)
A_ADDR = ("198.51.100.10", 1000)
B_ADDR = ("198.51.100.20", 2000)


class TurnNode:
    """The TURN server core on the simulator's network: its port and relayed ports."""

    def __init__(self, sim: IcePairSimulator, addr=TURN_ADDR) -> None:
        settings = TurnServerSettings(realm="sim", secret=SECRET, relay_ip=addr[0])
        self.server = TurnServer(settings, unix_offset=UNIX, nonce_key=b"n" * 32)
        # Every address here is a documentation range; the simulated peers are "global".
        self.server._policy.check = lambda ip: str(canonical_peer_ip(ip))  # type: ignore[method-assign]
        self.sim, self.addr = sim, addr
        self.relayed: dict[int, tuple[str, int]] = {}
        sim.servers[addr] = self.from_client

    def from_client(self, data: bytes, src: tuple[str, int]) -> None:
        self.server.receive(("udp", src), data, self.sim.now)
        self.flush()

    def from_peer(self, allocation_id: int, data: bytes, src: tuple[str, int]) -> None:
        self.server.receive_from_peer(allocation_id, src, data, self.sim.now)
        self.flush()

    def flush(self) -> None:
        now, wire = self.sim.now, self.sim.wire
        while (event := self.server.poll_event()) is not None:
            if isinstance(event, AllocationRequested):
                relayed = (self.addr[0], 50000 + event.allocation_id)
                self.relayed[event.allocation_id] = relayed
                self.sim.servers[relayed] = partial(self.from_peer, event.allocation_id)
                self.server.allocation_bound(event.allocation_id, relayed, now)
        while (out := self.server.poll_transmit()) is not None:
            if isinstance(out, ToClient):
                wire.push_plain((out.client[1], self.addr, out.data), now)
            else:
                assert isinstance(out, ToPeer)
                wire.push_plain((out.peer, self.relayed[out.allocation_id], out.data), now)


def turn_settings(name: str) -> TurnClientSettings:
    username, password = rest_api_credentials(SECRET, name, 86400, UNIX)
    return TurnClientSettings(TURN_ADDR, username, password)


def make_pair(*, relay_only: bool, nat: bool = False, link: LinkModel | None = None, seed=0):
    agents = [
        IceAgent(
            controlling,
            rng=random.Random(seed * 2 + i),
            stun_servers=[TURN_ADDR],
            turn_servers=[turn_settings(name)],
            relay_only=relay_only,
        )
        for i, (controlling, name) in enumerate([(True, "a"), (False, "b")])
    ]
    peers = []
    publics = ("203.0.113.1", "203.0.113.2")
    for agent, addr, public in zip(agents, (A_ADDR, B_ADDR), publics, strict=True):
        symmetric = Nat(public, "address-and-port-dependent", "address-and-port-dependent")
        peers.append(SimulatedPeer(agent, addr, nat=symmetric if nat else None))
    sim = IcePairSimulator(peers, link or LinkModel(), seed=seed)
    turn = TurnNode(sim)
    for agent, addr in zip(agents, (A_ADDR, B_ADDR), strict=True):
        agent.add_local_candidate(addr)
        agent.gather(0.0)
    sim.exchange_credentials()
    return sim, turn, agents[0], agents[1]


def connected(a: IceAgent, b: IceAgent):
    return lambda: a.state is IceState.CONNECTED and b.state is IceState.CONNECTED


def exchange_data(sim: IcePairSimulator, sender: IceAgent, receiver_index: int) -> None:
    transmit = sender.send_data(b"\x17\xfe\xfd through turn")
    assert transmit is not None and transmit.addr == TURN_ADDR  # wrapped for the server
    sim._send(sim.peers[1 - receiver_index], transmit.data, transmit.addr, transmit.local)
    events = sim.peers[receiver_index].events
    before = len(events)
    sim.run_until(
        lambda: any(isinstance(e, DataReceived) for e in events[before:]), max_time=sim.now + 60
    )
    received = [e for e in events[before:] if isinstance(e, DataReceived)]
    assert received[0].data == b"\x17\xfe\xfd through turn"


def test_relay_only_agents_offer_and_use_relay_candidates_only():
    sim, turn, a, b = make_pair(relay_only=True)
    sim.run_until(connected(a, b), max_time=30)
    for peer in sim.peers:
        gathered = [e.candidate for e in peer.events if isinstance(e, CandidateGathered)]
        assert [c.type for c in gathered] == ["relay"]
        assert gathered[0].priority >> 24 == 0  # type preference 0 (RFC 8445 5.1.2.2)
        assert gathered[0].related_address == peer.addr[0]  # raddr: what the server saw
        assert any(isinstance(e, GatheringComplete) for e in peer.events)
    for agent in (a, b):
        stats = agent.statistics()
        assert (stats.selected_local_type, stats.selected_remote_type) == ("relay", "relay")
    assert turn.server.statistics().allocations == 2
    exchange_data(sim, a, 1)
    exchange_data(sim, b, 0)
    assert turn.server.statistics().channels >= 2  # data went over ChannelData


def test_symmetric_nats_on_both_sides_connect_through_turn():
    sim, turn, a, b = make_pair(relay_only=False, nat=True)
    sim.run_until(connected(a, b), max_time=60)
    types = {a.selected_pair.local.type, a.selected_pair.remote.type}
    assert "relay" in types, a.selected_pair
    exchange_data(sim, a, 1)
    exchange_data(sim, b, 0)


def test_without_nats_the_host_pair_wins_over_relay():
    sim, turn, a, b = make_pair(relay_only=False)
    sim.run_until(connected(a, b), max_time=30)
    assert a.selected_pair.local.type == "host" and a.selected_pair.remote.type == "host"


@pytest.mark.parametrize("seed", range(10))
def test_relay_only_over_a_lossy_link(seed):
    # A check's round trip crosses six lossy hops here (peer, server, relayed socket,
    # each way), so 5% per hop is a quarter of the round trips lost.
    sim, turn, a, b = make_pair(relay_only=True, link=LinkModel(loss=0.05), seed=seed)
    sim.run_until(connected(a, b), max_time=60)
    assert a.statistics().selected_local_type == "relay"


def test_close_frees_the_allocations_and_relay_only_ignores_direct_checks():
    sim, turn, a, b = make_pair(relay_only=True)
    sim.run_until(connected(a, b), max_time=30)
    dropped = b.statistics().datagrams_dropped
    b.receive(b"\x00\x01\x00\x00" + bytes(16), A_ADDR, sim.now, B_ADDR)  # straight to the host
    assert b.statistics().datagrams_dropped == dropped + 1
    a.close()
    b.close()
    sim.run_until(lambda: turn.server.statistics().allocations == 0, max_time=sim.now + 5)


def test_a_relay_only_agent_needs_a_turn_server():
    with pytest.raises(ValueError, match="TURN"):
        IceAgent(True, relay_only=True)


def test_an_ice_restart_keeps_the_relay_candidate_and_gathers_from_hosts_only():
    sim, turn, a, b = make_pair(relay_only=False, nat=True)
    sim.run_until(connected(a, b), max_time=60)
    a.restart(sim.now)
    b.restart(sim.now)
    sim.exchange_credentials()
    sim.run_until(connected(a, b), max_time=sim.now + 60)
    assert "relay" in {a.selected_pair.local.type, a.selected_pair.remote.type}
    assert turn.server.statistics().allocations == 2  # the same allocations, not new ones
    relayed = set(turn.relayed.values())
    via_turn = [t for t in sim.wire.sent if t[0] == TURN_ADDR and t[1] in relayed]
    assert via_turn == []  # server-reflexive queries go from the hosts, never via TURN


def test_allocations_the_selected_pair_does_not_use_are_freed():
    sim, turn, a, b = make_pair(relay_only=False)  # no NATs: a host pair wins
    sim.run_until(connected(a, b), max_time=30)
    sim.run_until(lambda: turn.server.statistics().allocations == 0, max_time=sim.now + 5)
    exchange = a.send_data(b"\x17\xfe\xfd direct")
    assert exchange is not None and exchange.addr == B_ADDR  # not wrapped for TURN


def test_a_relayed_selected_pair_keeps_its_allocation():
    sim, turn, a, b = make_pair(relay_only=False, nat=True)
    sim.run_until(connected(a, b), max_time=60)
    for end in range(10, 710, 10):  # beyond the allocation's 600 s lifetime
        sim.run_until(lambda end=end: sim.now >= end, max_time=end + 10)
        turn.server.handle_timeout(sim.now)  # the server's expiries (not the simulator's)
        turn.flush()
    relayed_ends = [x for x in (a, b) if x.selected_pair.local.type == "relay"]
    assert relayed_ends and turn.server.statistics().allocations == len(relayed_ends)
    assert a.state is IceState.CONNECTED and b.state is IceState.CONNECTED
    exchange_data(sim, a, 1)
    exchange_data(sim, b, 0)
