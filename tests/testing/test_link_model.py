"""The shared link model of darkswap_trio.testing: seeded impairments and the NAT table."""

from __future__ import annotations

import random

from darkswap_trio.testing import DelayLine, LinkModel, Nat, SimulatedLink


def test_same_seed_same_fate():
    def fates(seed: int) -> list[list[float]]:
        rng = random.Random(seed)
        model = LinkModel(loss=0.3, duplicate=0.2, reorder=0.3, jitter=0.01)
        return [model.arrivals(rng, float(i)) for i in range(200)]

    assert fates(1) == fates(1)
    assert fates(1) != fates(2)
    outcomes = fates(1)
    assert any(not a for a in outcomes) and any(len(a) == 2 for a in outcomes)


def test_arrivals_stay_within_delay_jitter_and_hold_back():
    rng = random.Random(0)
    model = LinkModel(reorder=0.5, jitter=0.02, delay=0.01)
    for _ in range(500):
        (at,) = model.arrivals(rng, 1.0)
        assert 1.01 <= at <= 1.0 + 0.01 + 0.02 + 0.03


def test_outage_loses_everything_without_drawing():
    rng = random.Random(0)
    link: SimulatedLink[bytes] = SimulatedLink(rng, delay=0.01)
    link.up = False
    state = rng.getstate()
    link.push(b"x", 0.0)
    assert link.sent == [b"x"] and link.next_time() is None and rng.getstate() == state
    link.up = True
    link.push(b"y", 0.0)
    assert link.pop_due(0.005) == [] and link.pop_due(0.01) == [b"y"]


def test_delay_line_orders_by_time_then_sending_and_bounds():
    line: DelayLine[str] = DelayLine(capacity=3)
    assert line.push(2.0, "late") and line.push(1.0, "first") and line.push(1.0, "second")
    assert not line.push(0.5, "over capacity")
    assert line.pop() == (1.0, "first")
    assert line.pop_due(2.0, limit=1) == ["second"]
    assert line.pop_due(2.0) == ["late"] and line.next_time() is None


def test_nat_mapping_and_filtering():
    nat = Nat("203.0.113.1", filtering="address-dependent")
    private, server, other = ("10.0.0.2", 5000), ("198.51.100.1", 3478), ("198.51.100.2", 9)
    public = nat.outbound(private, server)
    assert nat.owns(public) and nat.mapping(private) == public
    assert nat.outbound(private, other) == public  # endpoint-independent mapping
    assert nat.inbound(public, ("198.51.100.1", 1234)) == private  # same host, other port
    assert nat.inbound(public, ("192.0.2.9", 1)) is None


def test_symmetric_nat_maps_each_destination_apart():
    nat = Nat("203.0.113.1", mapping="address-and-port-dependent")
    private = ("10.0.0.2", 5000)
    first = nat.outbound(private, ("198.51.100.1", 1))
    second = nat.outbound(private, ("198.51.100.1", 2))
    assert first != second
    assert nat.inbound(first, ("198.51.100.1", 2)) is None  # bound to its destination
