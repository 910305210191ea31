"""SctpAssociation properties: a hostile peer, and random traffic over a bad network."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from darkswap_trio.proto.sctp import OutgoingStreamsReset, SctpState
from darkswap_trio.proto.sctp import _chunks as c
from darkswap_trio.proto.sctp._packets import encode_packet
from darkswap_trio.testing._sctp_pair import MAX_STEPS, SctpPair, numbered_payload, parse_ours

# --- hostile peer -----------------------------------------------------------------------

_u16 = st.integers(0, 0xFFFF)
_u32 = st.integers(0, 0xFFFFFFFF)
_near = st.integers(-70_000, 70_000)  # TSN offsets around the live window
_hostile_chunks = st.lists(
    st.one_of(
        st.tuples(
            st.just("data"),
            _near,
            st.integers(0, 4),
            _u16,
            st.integers(0, 15),
            st.binary(min_size=1, max_size=40),
        ),
        st.tuples(
            st.just("sack"),
            _near,
            _u32,
            st.lists(st.tuples(st.integers(1, 70_000), st.integers(0, 70_000)), max_size=4),
            st.lists(_u32, max_size=3),
        ),
        st.tuples(st.just("fwd"), _near, st.lists(st.tuples(st.integers(0, 4), _u16), max_size=3)),
        st.tuples(st.just("reconfig"), _near, _near, _near, st.lists(_u16, max_size=3)),
        st.tuples(st.just("response"), _near, st.integers(0, 7)),
        st.tuples(
            st.just("raw"),
            st.sampled_from([1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 14, 0x3F, 0x7F, 0xBF, 0xFF]),
            st.integers(0, 1),
            st.binary(max_size=40),
        ),
    ),
    min_size=1,
    max_size=4,
)


def _hostile_chunk(spec, pair):
    kind = spec[0]
    their_tsn = pair.a._sender.next_tsn  # what b expects next from a
    our_tsn = pair.b._sender.next_tsn
    if kind == "data":
        _, off, sid, ssn, flags, data = spec
        return c.DataChunk((their_tsn + off) & 0xFFFFFFFF, sid, ssn, 53, data, flags)
    if kind == "sack":
        _, off, rwnd, gaps, dups = spec
        return c.SackChunk(
            (our_tsn + off) & 0xFFFFFFFF,
            rwnd,
            [(s, min(s + e, 0xFFFF)) for s, e in gaps if s <= 0xFFFF],
            dups,
        )
    if kind == "fwd":
        return c.ForwardTsnChunk((their_tsn + spec[1]) & 0xFFFFFFFF, spec[2])
    if kind == "reconfig":
        _, req, resp, last, streams = spec
        return c.ReconfigChunk(
            [
                c.OutgoingResetRequest(
                    (their_tsn + req) & 0xFFFFFFFF,
                    (our_tsn + resp) & 0xFFFFFFFF,
                    (their_tsn + last) & 0xFFFFFFFF,
                    tuple(streams),
                )
            ]
        )
    if kind == "response":
        return c.ReconfigChunk([c.ReconfigResponse((our_tsn + spec[1]) & 0xFFFFFFFF, spec[2])])
    _, ctype, flags, value = spec
    return c.UnknownChunk(ctype, flags, value)


@given(st.lists(_hostile_chunks, min_size=1, max_size=5), st.booleans())
@settings(max_examples=150, deadline=None)
def test_hostile_chunks_never_crash_the_association(packets, traffic):
    pair = SctpPair(seed=3)
    pair.connect()
    if traffic:
        for i in range(5):
            pair.a.send(i % 2, 53, numbered_payload(i, 3000), pair.now)
            pair.b.send(i % 2, 53, numbered_payload(i, 3000), pair.now)
        pair.run_for(0.005)
    header = parse_ours(pair.ab.sent[-1])[0]  # a's header, b's tag
    for specs in packets:
        chunks = [_hostile_chunk(spec, pair) for spec in specs]
        try:
            packet = encode_packet(header, chunks)
        except struct.error:
            continue  # a value our encoder cannot even represent
        pair.b.receive(packet, pair.now)
        pair.run_for(0.05)
    pair.run_for(5.0)
    for assoc in (pair.a, pair.b):
        stats = assoc.statistics()
        assert stats.flight_size >= 0 and stats.buffered_amount >= 0
        assert 0 <= stats.local_rwnd <= 2 << 20


# --- stateful property ------------------------------------------------------------------


class SctpPairMachine(RuleBasedStateMachine):
    """Random traffic, partial reliability, stream resets and link trouble.

    Invariants: nothing is delivered twice or invented, ordered reliable messages arrive
    in send order, partially reliable ones never overtake on ordered streams; at the end
    (link healed) every reliable message has arrived and every reset has completed.
    """

    @initialize(seed=st.integers(0, 10_000))
    def connect(self, seed):
        self.pair = SctpPair(seed=seed, reorder=0.3, a_kwargs={"heartbeat_interval": 2.0})
        self.pair.connect()

    def __init__(self):
        super().__init__()
        self.sent = {"a": [], "b": []}  # (sid, ordered, reliable, data) sent to that side
        self.resets = {"a": set(), "b": set()}  # outgoing streams being reset, by sender
        self.counter = 0
        self.blackout_total = 0.0

    def _note_completed_resets(self):
        for name in ("a", "b"):
            for event in self.pair.events[name]:
                if isinstance(event, OutgoingStreamsReset):
                    self.resets[name].difference_update(event.stream_ids)
            self.pair.events[name] = [
                e for e in self.pair.events[name] if not isinstance(e, OutgoingStreamsReset)
            ]

    @rule(
        src=st.sampled_from(["a", "b"]),
        sid=st.integers(0, 3),
        size=st.sampled_from([4, 50, 1160, 1161, 4000, 30_000]),
        ordered=st.booleans(),
        policy=st.sampled_from(
            [None, None, None, ("max_retransmits", 0), ("max_retransmits", 2), ("lifetime", 0.3)]
        ),
    )
    def send(self, src, sid, size, ordered, policy):
        self._note_completed_resets()
        if sid in self.resets[src]:
            with pytest.raises(ValueError):
                self.pair.side(src).send(sid, 53, b"x", self.pair.now)
            return
        self.counter += 1
        data = numbered_payload(self.counter, size)
        kwargs = dict([policy]) if policy else {}
        self.pair.side(src).send(sid, 53, data, self.pair.now, ordered=ordered, **kwargs)
        self.sent["b" if src == "a" else "a"].append((sid, ordered, policy is None, data))

    @rule(src=st.sampled_from(["a", "b"]), sid=st.integers(0, 3))
    def reset(self, src, sid):
        self._note_completed_resets()
        self.pair.side(src).reset_streams([sid])
        self.resets[src].add(sid)

    @rule(loss=st.sampled_from([0.0, 0.1, 0.4]), dup=st.sampled_from([0.0, 0.2]))
    def change_link(self, loss, dup):
        for link in (self.pair.ab, self.pair.ba):
            link.loss, link.duplicate = loss, dup

    @precondition(lambda self: self.blackout_total < 10)  # longer and the peer is gone
    @rule(duration=st.sampled_from([0.5, 3.0]))
    def blackout(self, duration):
        self.pair.ab.up = self.pair.ba.up = False
        self.pair.run_for(duration)
        self.blackout_total += duration
        self.pair.ab.up = self.pair.ba.up = True

    @precondition(lambda self: self.pair.steps < MAX_STEPS // 2)
    @rule(duration=st.sampled_from([0.01, 0.1, 1.0]))
    def advance(self, duration):
        self.pair.run_for(duration)

    @invariant()
    def delivered_is_consistent(self):
        for name in ("a", "b"):
            assert self.pair.side(name).state is SctpState.ESTABLISHED
            got = [(m.stream_id, m.data) for m in self.pair.messages(name)]
            assert len(set(got)) == len(got)
            sent = self.sent[name]
            assert set(got) <= {(sid, data) for sid, _, _, data in sent}
            position = {data: i for i, (_, _, _, data) in enumerate(sent)}
            for sid in range(4):
                ordered = [position[d] for s, d in got if s == sid and sent[position[d]][1]]
                assert ordered == sorted(ordered)
                reliable = [i for i, (s, o, r, _) in enumerate(sent) if s == sid and o and r]
                seen = [i for i in ordered if i in set(reliable)]
                assert seen == reliable[: len(seen)]
        stats = self.pair.a.statistics()
        assert stats.flight_size >= 0 and stats.cwnd >= 1188

    def teardown(self):
        for link in (self.pair.ab, self.pair.ba):
            link.loss = link.duplicate = 0.0
            link.up = True

        def all_reliable_arrived():
            for name in ("a", "b"):
                got = {(m.stream_id, m.data) for m in self.pair.messages(name)}
                if any(r and (s, d) not in got for s, _, r, d in self.sent[name]):
                    return False
            return True

        self.pair.run_until(all_reliable_arrived, 600)
        self.pair.run_until(
            lambda: self.pair.a.buffered_amount() == self.pair.b.buffered_amount() == 0, 600
        )

        def resets_done():
            self._note_completed_resets()
            return not self.resets["a"] and not self.resets["b"]

        self.pair.run_until(resets_done, 600)


TestSctpPairMachine = SctpPairMachine.TestCase
TestSctpPairMachine.settings = settings(max_examples=100, stateful_step_count=30, deadline=None)
