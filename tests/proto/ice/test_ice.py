"""The sans-IO ICE agent, in pairs stepped through simulated time."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from darkswap_trio.proto.errors import SdpParseError
from darkswap_trio.proto.ice._agent import IceAgent
from darkswap_trio.proto.ice._checklist import PairState, parse_candidate_untrusted
from darkswap_trio.proto.ice._connectivity import MIN_TA
from darkswap_trio.proto.ice._events import (
    CandidateGathered,
    ConsentLost,
    DataReceived,
    GatheringComplete,
    IceState,
    RoleChanged,
    SelectedPairChanged,
)
from darkswap_trio.proto.stun import binding_success_response, parse_stun_untrusted
from darkswap_trio.testing._ice_pair import IcePairSimulator, LinkModel, SimulatedPeer

A_ADDR = ("10.0.0.1", 1000)
B_ADDR = ("10.0.0.2", 2000)
A2_ADDR = ("10.1.0.1", 1001)
B2_ADDR = ("10.1.0.2", 2001)


def make_pair(link=None, seed=0, a_controlling=True, b_controlling=False, **kwargs):
    a = IceAgent(a_controlling, rng=random.Random(seed * 2 + 1), **kwargs)
    b = IceAgent(b_controlling, rng=random.Random(seed * 2 + 2), **kwargs)
    sim = IcePairSimulator(
        [SimulatedPeer(a, A_ADDR), SimulatedPeer(b, B_ADDR)], link or LinkModel(), seed=seed
    )
    a.add_local_candidate(A_ADDR)
    b.add_local_candidate(B_ADDR)
    a.gather(0.0)
    b.gather(0.0)
    sim.exchange_credentials()
    return sim, a, b


def both_connected(a, b):
    return lambda: a.state is IceState.CONNECTED and b.state is IceState.CONNECTED


def test_pair_connects_directly():
    sim, a, b = make_pair()
    sim.run_until(both_connected(a, b), max_time=5)
    assert a.selected_pair.remote_addr == B_ADDR
    assert b.selected_pair.remote_addr == A_ADDR
    assert a.selected_pair.nominated and b.selected_pair.nominated
    assert a.selected_pair.state is PairState.SUCCEEDED
    assert sim.now < 1.0
    assert any(isinstance(e, SelectedPairChanged) for e in sim.peers[1].events)


def test_data_flows_on_selected_pair():
    sim, a, b = make_pair()
    sim.run_until(both_connected(a, b), max_time=5)
    transmit = a.send_data(b"\x17\xfe\xfd hello")
    assert transmit is not None and transmit.addr == B_ADDR
    b.receive(transmit.data, A_ADDR, sim.now, B_ADDR)
    assert DataReceived(b"\x17\xfe\xfd hello", A_ADDR) in [b.poll_event()]
    # Datagrams from an address ICE never validated are dropped and counted.
    b.receive(b"\x17\xfe\xfd spoof", ("10.9.9.9", 9), sim.now, B_ADDR)
    assert b.poll_event() is None
    assert b.statistics().datagrams_dropped == 1


def make_multihomed_pair(link, seed, a_controlling=True, b_controlling=False):
    """Two interfaces each: 4 pairs, so pacing, freezing and nomination all matter."""
    a = IceAgent(a_controlling, rng=random.Random(seed * 2 + 1))
    b = IceAgent(b_controlling, rng=random.Random(seed * 2 + 2))
    sim = IcePairSimulator(
        [
            SimulatedPeer(a, A_ADDR, aliases=(A2_ADDR,)),
            SimulatedPeer(b, B_ADDR, aliases=(B2_ADDR,)),
        ],
        link,
        seed=seed,
    )
    for agent, addrs in ((a, (A_ADDR, A2_ADDR)), (b, (B_ADDR, B2_ADDR))):
        for addr in addrs:
            agent.add_local_candidate(addr)
        agent.gather(0.0)
    sim.exchange_credentials()
    return sim, a, b


def test_lossy_link_still_connects():
    link = LinkModel(loss=0.2, duplicate=0.2, reorder_jitter=0.1)
    retransmissions = 0
    for seed in range(20):
        sim, a, b = make_multihomed_pair(link, seed)
        sim.run_until(both_connected(a, b), max_time=60)
        assert len(a.pairs) == len(b.pairs) == 4
        # Both ends agree on the one nominated pair.
        assert a.selected_pair.local_addr == b.selected_pair.remote_addr
        assert a.selected_pair.remote_addr == b.selected_pair.local_addr
        retransmissions += a.statistics().retransmissions + b.statistics().retransmissions
    assert retransmissions > 0  # the loss was real and repaired


def test_role_conflict_both_controlling():
    sim, a, b = make_pair(b_controlling=True)
    a._credentials.tie_breaker, b._credentials.tie_breaker = 10, 5  # noqa: SLF001 - deterministic winner
    sim.run_until(both_connected(a, b), max_time=10)
    assert a.controlling and not b.controlling
    assert b.statistics().role_conflicts + a.statistics().role_conflicts >= 1
    assert RoleChanged(False) in sim.peers[1].events


def test_role_conflict_both_controlled():
    sim, a, b = make_pair(a_controlling=False, b_controlling=False)
    a._credentials.tie_breaker, b._credentials.tie_breaker = 10, 5  # noqa: SLF001
    sim.run_until(both_connected(a, b), max_time=10)
    assert a.controlling and not b.controlling
    assert RoleChanged(True) in sim.peers[0].events


def test_trickle_late_candidates():
    a = IceAgent(True, rng=random.Random(1))
    b = IceAgent(False, rng=random.Random(2))
    sim = IcePairSimulator(
        [SimulatedPeer(a, A_ADDR), SimulatedPeer(b, B_ADDR)], LinkModel(), signal_candidates=False
    )
    sim.exchange_credentials()
    a_host = a.add_local_candidate(A_ADDR)
    b.add_local_candidate(B_ADDR)
    # Nothing to check yet: no remote candidates on either side.
    sim.run_until(lambda: sim.now >= 1.0 or a.poll_timeout() is None, max_time=2)
    assert a.state is IceState.CHECKING and not a.pairs
    # Only B learns A's candidate; A learns B as peer-reflexive from B's check.
    b.add_remote_candidate(a_host, sim.now)
    sim.run_until(both_connected(a, b), max_time=5)
    assert a.remote_candidates[0].type == "prflx"
    # The late signal upgrades the prflx candidate in place, keeping the pair.
    a.add_remote_candidate(b.local_candidates[0], sim.now)
    assert a.remote_candidates[0].type == "host" and len(a.pairs) == 1


def test_failed_when_all_pairs_fail():
    sim, a, b = make_pair()
    sim.link.loss = 1.0
    sim.run_until(lambda: a.state is IceState.FAILED, max_time=120)
    assert all(p.state is PairState.FAILED for p in a.pairs)
    assert a.send_data(b"\x17") is None


def test_consent_freshness_and_loss():
    sim, a, b = make_pair()
    sim.run_until(both_connected(a, b), max_time=5)
    connected_at = sim.now
    # Consent checks keep the pair alive well past the 30 s consent timeout.
    sim.run_until(lambda: sim.now > connected_at + 100, max_time=200)
    assert a.state is IceState.CONNECTED and b.state is IceState.CONNECTED
    assert a.statistics().checks_sent == 2  # the check and the nomination only
    # Cut the link: consent expires after 30 s without a response.
    sim.link.loss = 1.0
    cut_at = sim.now
    sim.run_until(lambda: ConsentLost() in sim.peers[0].events, max_time=400)
    # Consent ran out 30 s after the last response, which came at most ~6 s before the cut.
    assert cut_at + 30 - 6.1 <= sim.now <= cut_at + 30
    assert a.state is IceState.FAILED
    assert a.send_data(b"\x17") is None


def test_ice_restart_reconnects():
    sim, a, b = make_pair()
    sim.run_until(both_connected(a, b), max_time=5)
    old_ufrag = a.local_ufrag
    a.restart(sim.now)
    b.restart(sim.now)
    assert a.local_ufrag != old_ufrag
    # Data keeps flowing on the old pair while the restart runs.
    assert a.send_data(b"\x17") is not None
    sim.exchange_credentials()
    sim.run_until(both_connected(a, b), max_time=sim.now + 5)
    selected = [e for e in sim.peers[0].events if isinstance(e, SelectedPairChanged)]
    assert len(selected) == 2


def test_srflx_gathering_and_nat():
    """A is behind a full-cone NAT: its host address is unreachable from B."""
    stun_addr = ("192.0.2.100", 3478)
    a = IceAgent(True, rng=random.Random(1), stun_servers=[stun_addr])
    b = IceAgent(False, rng=random.Random(2), stun_servers=[stun_addr])
    public = ("203.0.113.1", 5000)
    sim = IcePairSimulator(
        [SimulatedPeer(a, A_ADDR, public_addr=public), SimulatedPeer(b, B_ADDR)], LinkModel()
    )

    def stun_server(data, src):
        request = parse_stun_untrusted(data)
        return binding_success_response(request, src)

    sim.servers[stun_addr] = stun_server
    a.add_local_candidate(A_ADDR)
    b.add_local_candidate(B_ADDR)
    a.gather(0.0)
    b.gather(0.0)
    sim.exchange_credentials()
    sim.run_until(both_connected(a, b), max_time=10)
    a_events = sim.peers[0].events
    srflx = [e.candidate for e in a_events if isinstance(e, CandidateGathered)]
    assert [c.type for c in srflx] == ["host", "srflx"]
    assert (srflx[1].host, srflx[1].port) == public
    assert (srflx[1].related_address, srflx[1].related_port) == A_ADDR
    assert GatheringComplete() in a_events
    # B's host candidate needs no srflx: the mapping equals the host address.
    assert [c.type for c in b.local_candidates] == ["host"]
    assert b.selected_pair.remote_addr == public


@given(
    seed=st.integers(0, 2**16),
    loss=st.floats(0, 0.3),
    duplicate=st.floats(0, 0.3),
    jitter=st.floats(0, 0.2),
    a_controlling=st.booleans(),
    b_controlling=st.booleans(),
)
def test_invariants_over_imperfect_links(
    seed, loss, duplicate, jitter, a_controlling, b_controlling
):
    link = LinkModel(loss=loss, duplicate=duplicate, reorder_jitter=jitter)
    sim, a, b = make_multihomed_pair(link, seed, a_controlling, b_controlling)

    def check_invariants():
        for agent in (a, b):
            selected = agent.selected_pair
            if selected is not None:
                assert selected.nominated
                assert selected.state is PairState.SUCCEEDED
                assert agent.state is IceState.CONNECTED
            for pair in agent.pairs:
                if pair.nominated:
                    assert pair.state is PairState.SUCCEEDED
            assert len(agent.pairs) <= 4
        if a.state is IceState.CONNECTED and b.state is IceState.CONNECTED:
            assert a.controlling != b.controlling
        return a.state is IceState.CONNECTED and b.state is IceState.CONNECTED

    def agreed():
        pa, pb = a.selected_pair, b.selected_pair
        return (
            check_invariants()
            and pa.local_addr == pb.remote_addr
            and pa.remote_addr == pb.local_addr
        )

    sim.run_until(check_invariants, max_time=120)
    # Both sides may be connected on different pairs for a moment: a nominating check
    # whose responses were all lost fails at the controlling side while the controlled
    # side already selected that pair; the controlling side's next nomination replaces
    # it once the controlled side's own check on the new pair succeeds (RFC 8445
    # 7.3.1.5). Agreement must follow, within bounded time.
    sim.run_until(agreed, max_time=sim.now + 60)


@given(st.binary(max_size=120), st.sampled_from([A_ADDR, ("::1", 5), ("10.0.0.9", 9)]))
def test_receive_any_datagram_never_raises(data, addr):
    sim, a, b = make_pair()
    sim.run_until(both_connected(a, b), max_time=5)
    before = a.selected_pair
    a.receive(data, addr, sim.now, A_ADDR)
    # Also a well-framed STUN header with garbage attributes.
    a.receive(
        b"\x00\x01"
        + len(data[:40]).to_bytes(2, "big")
        + bytes.fromhex("2112a442")
        + bytes(12)
        + data[:40],
        addr,
        sim.now,
        A_ADDR,
    )
    a.handle_timeout(sim.now)
    assert a.selected_pair is before and a.state is IceState.CONNECTED


def test_checks_before_remote_credentials_are_answered_and_replayed():
    a = IceAgent(True, rng=random.Random(1))
    b = IceAgent(False, rng=random.Random(2))
    sim = IcePairSimulator(
        [SimulatedPeer(a, A_ADDR), SimulatedPeer(b, B_ADDR)], LinkModel(), signal_candidates=False
    )
    a.add_local_candidate(A_ADDR)
    b.add_local_candidate(B_ADDR)
    # A knows everything about B; B has not received A's answer yet.
    a.set_remote_credentials(b.local_ufrag, b.local_pwd, 0.0)
    a.add_remote_candidate(b.local_candidates[0], 0.0)
    sim.run_until(lambda: a.pairs[0].state is PairState.SUCCEEDED, max_time=2)
    assert b.state is IceState.NEW and a.pairs[0].state is PairState.SUCCEEDED
    b.set_remote_credentials(a.local_ufrag, a.local_pwd, sim.now)
    sim.run_until(both_connected(a, b), max_time=5)
    assert b.remote_candidates[0].type == "prflx"


def test_data_before_selection_goes_back_to_a_validated_address_only():
    """RFC 8445 section 12.1: before a pair is selected, data may go on a valid pair;
    send_data(reply_to=) answers the address the peer's DTLS came from if ICE
    validated it (an authenticated check, even before the answer), else nothing."""
    a = IceAgent(True, rng=random.Random(1))
    b = IceAgent(False, rng=random.Random(2))
    sim = IcePairSimulator(
        [SimulatedPeer(a, A_ADDR), SimulatedPeer(b, B_ADDR)], LinkModel(), signal_candidates=False
    )
    a.add_local_candidate(A_ADDR)
    b.add_local_candidate(B_ADDR)
    assert a.send_data(b"\x16 hello", reply_to=B_ADDR) is None  # nothing validated
    # B knows A; A has not got B's answer yet, but answers (and so validates) its checks.
    b.set_remote_credentials(a.local_ufrag, a.local_pwd, 0.0)
    b.add_remote_candidate(a.local_candidates[0], 0.0)
    sim.run_until(lambda: b.pairs and b.pairs[0].state is PairState.SUCCEEDED, max_time=2)
    assert a.selected_pair is None and b.selected_pair is None
    # B, which speaks first (a DTLS client), may use its best valid pair already; its
    # statistics name that pair as the active one, none as selected.
    stats = b.statistics()
    assert (stats.selected_local_type, stats.active_local_type) == (None, "host")
    assert stats.active_remote_type == "host"
    transmit = b.send_data(b"\x16\xfe\xfd early hello")
    assert transmit is not None and transmit.addr == A_ADDR
    a.receive(b"\x16\xfe\xfd early hello", B_ADDR, sim.now, A_ADDR)
    assert a.poll_event() == DataReceived(b"\x16\xfe\xfd early hello", B_ADDR)
    transmit = a.send_data(b"\x16 reply", reply_to=B_ADDR)
    assert transmit is not None and transmit.addr == B_ADDR
    assert a.send_data(b"\x16 reply", reply_to=("10.9.9.9", 9)) is None  # never validated
    assert a.send_data(b"\x16 reply") is None  # no pair, no address to answer
    # Once a pair is selected, it carries the data whatever reply_to says.
    a.set_remote_credentials(b.local_ufrag, b.local_pwd, sim.now)
    sim.run_until(both_connected(a, b), max_time=5)
    transmit = a.send_data(b"\x16 data", reply_to=("10.9.9.9", 9))
    assert transmit is not None and transmit.addr == B_ADDR
    stats = a.statistics()
    assert (stats.selected_local_type, stats.active_local_type) == ("host", "host")
    a.close()
    assert a.send_data(b"\x16 data", reply_to=B_ADDR) is None


def test_wrong_password_gets_401_and_no_pair():
    a = IceAgent(True, rng=random.Random(1))
    b = IceAgent(False, rng=random.Random(2))
    sim = IcePairSimulator(
        [SimulatedPeer(a, A_ADDR), SimulatedPeer(b, B_ADDR)], LinkModel(), signal_candidates=False
    )
    a.add_local_candidate(A_ADDR)
    b.add_local_candidate(B_ADDR)
    a.set_remote_credentials(b.local_ufrag, "x" * 22, 0.0)
    a.add_remote_candidate(b.local_candidates[0], 0.0)
    a.add_remote_candidate(None, 0.0)
    sim.run_until(lambda: a.state is IceState.FAILED, max_time=60)
    assert b.pairs == [] and b.statistics().requests_received >= 1


class TrickleOverImperfectLink(RuleBasedStateMachine):
    """Candidates trickle in any order while the link misbehaves; invariants hold."""

    @initialize(seed=st.integers(0, 2**16), a_controlling=st.booleans())
    def setup(self, seed, a_controlling):
        self.a = IceAgent(a_controlling, rng=random.Random(seed))
        self.b = IceAgent(not a_controlling, rng=random.Random(seed + 1))
        self.sim = IcePairSimulator(
            [
                SimulatedPeer(self.a, A_ADDR, aliases=(A2_ADDR,)),
                SimulatedPeer(self.b, B_ADDR, aliases=(B2_ADDR,)),
            ],
            LinkModel(),
            seed=seed,
            signal_candidates=False,
        )
        for addr in (A_ADDR, A2_ADDR):
            self.a.add_local_candidate(addr)
        for addr in (B_ADDR, B2_ADDR):
            self.b.add_local_candidate(addr)
        self.sim.exchange_credentials()

    @rule(to_b=st.booleans(), index=st.integers(0, 1))
    def trickle(self, to_b, index):
        source, target = (self.a, self.b) if to_b else (self.b, self.a)
        target.add_remote_candidate(source.local_candidates[index], self.sim.now)

    @rule(loss=st.sampled_from([0.0, 0.2, 0.5]), duplicate=st.floats(0, 0.3))
    def change_link(self, loss, duplicate):
        self.sim.link.loss = loss
        self.sim.link.duplicate = duplicate
        self.sim.link.reorder_jitter = 0.1

    @rule(steps=st.integers(1, 60))
    def advance(self, steps):
        for _ in range(steps):
            if not self.sim.step():
                break

    @rule(data=st.binary(max_size=64))
    def garbage_to_a(self, data):
        self.a.receive(data, B_ADDR, self.sim.now, A_ADDR)

    @invariant()
    def pairs_are_consistent(self):
        for agent in (self.a, self.b):
            selected = agent.selected_pair
            if selected is not None:
                assert selected.nominated and selected.state is PairState.SUCCEEDED
                assert agent.state in (IceState.CONNECTED, IceState.FAILED)
            for pair in agent.pairs:
                if pair.nominated:
                    assert pair.state is PairState.SUCCEEDED
                assert (pair.local.host, pair.local.port) in (A_ADDR, A2_ADDR, B_ADDR, B2_ADDR)
            assert len(agent.pairs) <= 4
            timeout = agent.poll_timeout()
            assert timeout is None or timeout >= 0
        if self.a.state is IceState.CONNECTED and self.b.state is IceState.CONNECTED:
            assert self.a.controlling != self.b.controlling

    def teardown(self):
        # With every candidate signalled and a clean link, both sides connect.
        if not hasattr(self, "sim"):
            return
        for index in (0, 1):
            self.b.add_remote_candidate(self.a.local_candidates[index], self.sim.now)
            self.a.add_remote_candidate(self.b.local_candidates[index], self.sim.now)
        self.sim.link.loss = 0.0
        if IceState.FAILED in (self.a.state, self.b.state):
            # Only a lost consent (30 s at 50% loss) may end a session this early.
            assert any(ConsentLost() in peer.events for peer in self.sim.peers)
            return
        self.sim.run_until(both_connected(self.a, self.b), max_time=self.sim.now + 120)


TestTrickleOverImperfectLink = TrickleOverImperfectLink.TestCase


def test_parse_candidate_untrusted():
    sdp = (
        "candidate:842163049 1 udp 1677729535 203.0.113.1 46154 typ srflx raddr 10.0.0.1 rport 5000"
    )
    candidate = parse_candidate_untrusted(sdp)
    assert (candidate.type, candidate.host, candidate.port) == ("srflx", "203.0.113.1", 46154)
    assert (candidate.related_address, candidate.related_port) == ("10.0.0.1", 5000)
    assert parse_candidate_untrusted(candidate.to_sdp()).to_sdp() == candidate.to_sdp()
    v6 = parse_candidate_untrusted("1 1 UDP 2130706431 2001:DB8::0001 9 typ host")
    assert v6.host == "2001:db8::1"
    for bad in (
        "1 1 tcp 2130706431 10.0.0.1 9 typ host tcptype active",  # TCP
        "1 2 udp 2130706431 10.0.0.1 9 typ host",  # RTCP component
        "1 1 udp 2130706431 abcd.local 9 typ host",  # mDNS name
        "1 1 udp 2130706431 10.0.0.1 70000 typ host",  # port
        "1 1 udp 2130706431 10.0.0.1 9 typ weird",
        "1 1 udp x 10.0.0.1 9 typ host",
        "too short",
    ):
        with pytest.raises(SdpParseError):
            parse_candidate_untrusted(bad)


@given(st.text(max_size=120))
def test_parse_candidate_any_text_raises_only_sdp_parse_error(text):
    try:
        parse_candidate_untrusted(text)
    except SdpParseError:
        pass


@given(
    st.lists(
        st.sampled_from(["1", "udp", "typ", "host", "raddr", "rport", "10.0.0.1", "x", "-5"]),
        min_size=6,
        max_size=14,
    )
)
def test_parse_candidate_token_soup_raises_only_sdp_parse_error(tokens):
    try:
        parse_candidate_untrusted(" ".join(tokens))
    except SdpParseError:
        pass


def test_end_of_candidates_before_credentials_with_nothing_to_pair():
    agent = IceAgent(True, rng=random.Random(1))
    agent.add_local_candidate(A_ADDR)
    agent.add_remote_candidate(None, 0.0)
    assert agent.state is IceState.NEW
    agent.set_remote_credentials("abcd", "x" * 22, 0.0)
    assert agent.state is IceState.FAILED
    # An IPv6-only peer cannot pair with an IPv4 host either.
    other = IceAgent(True, rng=random.Random(2))
    other.add_local_candidate(A_ADDR)
    other.set_remote_credentials("abcd", "x" * 22, 0.0)
    other.add_remote_candidate(parse_candidate_untrusted("1 1 udp 1 2001:db8::1 9 typ host"), 0.0)
    assert other.pairs == []
    other.add_remote_candidate(None, 0.0)
    assert other.state is IceState.FAILED


@pytest.mark.parametrize("pacing", [0.05, 0.005])
def test_nomination_and_triggered_checks_do_not_wait_for_ta(pacing):
    """The controlled side's triggered check and the controlling side's nominating check
    go out MIN_TA (RFC 8445 14.2's 5 ms floor) after their previous check, not at the
    next Ta slot: with a peer that proposes no a=ice-pacing (Ta 50 ms) two Ta slots
    were most of the time to open a channel."""
    sim, a, b = make_pair(link=LinkModel(delay=0.0005), pacing=pacing)
    sim.run_until(both_connected(a, b), max_time=5)
    # First check at 0 (answered at 1 ms), USE-CANDIDATE at 5 ms, answered 1 ms later.
    assert sim.now == pytest.approx(MIN_TA + 0.001)
    assert a.statistics().checks_sent == 2


@pytest.mark.parametrize("pacing", [0.05, 0.005])
def test_ta_still_paces_ordinary_checks(pacing):
    """New pairs are probed one per Ta (RFC 8445 6.1.4.2), however fast answers come."""
    agent = IceAgent(True, pacing=pacing, rng=random.Random(7))
    assert unanswered_check_times(agent, 2.5 * pacing) == pytest.approx([0.0, pacing, 2 * pacing])


def unanswered_check_times(agent: IceAgent, until: float) -> list[float]:
    """When ``agent`` sends checks to three remote hosts that never answer."""
    agent.add_local_candidate(A_ADDR)
    agent.set_remote_credentials("abcd", "x" * 22, 0.0)
    for host in ("192.0.2.10", "192.0.2.11", "192.0.2.12"):
        agent.add_remote_candidate(parse_candidate_untrusted(f"1 1 udp 1 {host} 9 typ host"), 0.0)
    now, sent = 0.0, []
    while now < until:
        while agent.poll_transmit() is not None:
            sent.append(now)
        now = agent.poll_timeout()
        agent.handle_timeout(now)
    return sent


def test_pacing_below_five_ms_is_refused():
    with pytest.raises(ValueError, match="pacing"):
        IceAgent(True, pacing=0.001)
    agent = IceAgent(True)
    with pytest.raises(ValueError, match="pacing"):
        agent.set_pacing(0.004)
    assert agent.pacing == 0.05


def test_set_pacing_before_the_checks_start():
    """What a peer connection does once the remote description tells it the agreed Ta."""
    a = IceAgent(True, rng=random.Random(1))
    b = IceAgent(False, rng=random.Random(2))
    sim = IcePairSimulator(
        [SimulatedPeer(a, A_ADDR), SimulatedPeer(b, B_ADDR)], LinkModel(delay=0.0005)
    )
    for agent, addr in ((a, A_ADDR), (b, B_ADDR)):
        agent.add_local_candidate(addr)
        agent.gather(0.0)
        agent.set_pacing(0.02)
        assert agent.pacing == 0.02
    sim.exchange_credentials()
    sim.run_until(both_connected(a, b), max_time=5)
    assert sim.now == pytest.approx(MIN_TA + 0.001)  # the nomination waits for no Ta
    agent = IceAgent(True, rng=random.Random(3))
    agent.set_pacing(0.02)
    assert unanswered_check_times(agent, 0.05) == pytest.approx([0.0, 0.02, 0.04])
