"""ConnectionAdmission bookkeeping (issue #10 item 4), without sockets: per-IP and pending
caps from accept, fair eviction, idempotent release, and a property over any sequence."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from relay._admission import ConnectionAdmission, ConnectionTicket
from relay._config import LimitsConfig
from relay._metrics import RelayMetrics


class FakeSession:
    registered = False


class ClosableStream:
    """Stands in for a socket stream: eviction closes ``socket``."""

    class _Socket:
        closed = False

        def close(self) -> None:
            self.closed = True

    def __init__(self) -> None:
        self.socket = self._Socket()


def admission(**limits) -> ConnectionAdmission:
    lim = LimitsConfig(connections_per_ip_rate=0, **limits)
    return ConnectionAdmission(lim, RelayMetrics())


def admit(a: ConnectionAdmission, ip: str, port: int = 0):
    return a.try_admit(ip, 0.0, (ip, port), ClosableStream())


def test_caps_count_from_accept_and_registration_ends_pending():
    a = admission(max_sessions_per_ip=3, max_pending_per_ip=2)
    first, second = admit(a, "10.0.0.1", 1), admit(a, "10.0.0.1", 2)
    assert isinstance(first, ConnectionTicket) and isinstance(second, ConnectionTicket)
    assert admit(a, "10.0.0.1", 3)[3] == "pending_per_ip"
    first.session = FakeSession()
    first.session.registered = True
    a.registered(first)  # what a relay session does: no longer pending, still a session
    assert a.pending("10.0.0.1") == 1
    assert isinstance(admit(a, "10.0.0.1", 4), ConnectionTicket)
    assert admit(a, "10.0.0.1", 5)[3] == "sessions_per_ip"
    a.release(first)
    a.release(first)  # idempotent
    assert a.slots.count("10.0.0.1") == 2


def test_registration_is_told_not_polled():
    """A session registering later tells admission; one registered already (a mesh link)
    ends pending when assigned. Either way the counts are exact without a scan."""
    a = admission(max_pending_per_ip=0, max_pending_connections=2)
    first, second = admit(a, "10.0.0.1", 1), admit(a, "10.0.0.1", 2)
    first.session = FakeSession()  # not registered yet: still pending
    assert a.pending_total == 2
    first.session.registered = True
    a.registered(first)
    assert a.pending_total == 1
    assert isinstance(admit(a, "10.0.0.1", 3), ConnectionTicket)
    a.registered(first)  # idempotent, and release does not count it twice
    a.release(first)
    assert a.pending_total == 2
    link = FakeSession()
    link.registered = True
    second.session = link  # assigned registered: pending ends at once
    assert a.pending_total == 1 and a.pending("10.0.0.1") == 1


def test_full_pending_table_evicts_the_heaviest_address_only_when_fair():
    a = admission(max_pending_per_ip=0, max_pending_connections=4)
    flood = [admit(a, "10.0.0.9", i) for i in range(3)]
    other = admit(a, "10.0.0.8", 0)
    honest = admit(a, "10.0.0.1", 0)
    assert isinstance(honest, ConnectionTicket)
    assert flood[0].evicted and flood[0].released and flood[0].stream is None
    assert not any(t.evicted for t in flood[1:]) and not other.evicted
    assert a.pending("10.0.0.9") == 2 and a.pending_total == 4
    # 10.0.0.8 holds 1, after admission it would hold 2 = the heaviest: refused.
    assert admit(a, "10.0.0.8", 1)[3] == "max_pending"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["admit", "release", "register"]), st.integers(0, 3)),
        max_size=60,
    )
)
def test_counts_never_exceed_the_caps(ops):
    a = admission(max_sessions=6, max_sessions_per_ip=4, max_pending_per_ip=3,
                  max_pending_connections=5)  # fmt: skip
    live: list[ConnectionTicket] = []
    for port, (op, n) in enumerate(ops):
        ip = f"10.0.0.{n}"
        if op == "admit":
            ticket = admit(a, ip, port)
            if isinstance(ticket, ConnectionTicket):
                live.append(ticket)
        elif op == "release" and live:
            a.release(live.pop(n % len(live)))
        elif op == "register" and live:
            ticket = live[n % len(live)]
            if not ticket.released:
                ticket.session = FakeSession()
                ticket.session.registered = True
                a.registered(ticket)
        live = [t for t in live if not t.released]
        assert a.slots.total == len(live) <= 6
        assert all(a.slots.count(f"10.0.0.{i}") <= 4 for i in range(4))
        assert all(a.pending(f"10.0.0.{i}") <= 3 for i in range(4))
        assert a.pending_total == sum(not t.registered for t in live) <= 5
