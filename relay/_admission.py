"""Connection admission from TCP accept (issue #10 item 4: idle connections exhaust fds).

Every accepted connection is counted against its source IP before a byte is read, so a
crowd of idle sockets (no HTTP head, or an upgrade and no Register) cannot pile up under
the per-IP caps that used to apply only after the HTTP head. A connection is *pending*
from accept until its session registers (the session tells :meth:`~ConnectionAdmission.registered`,
no table scan); pending connections are capped per IP and in total. When the pending table is full, a newcomer may displace the oldest pending
connection of the IP holding the most pending ones, if that IP holds more than the
newcomer's would (max-min fairness): an address that floods idle connections loses them
to honest clients, never the other way round.

:class:`ConnectionAdmission` is synchronous bookkeeping plus the listener's hooks
(``serve_websocket(admit=..., release=...)``): :meth:`~ConnectionAdmission.admit` runs
once per accepted connection and :meth:`~ConnectionAdmission.release` when it is done.
No task, scope or generator is kept per connection (a ticket is a few slots), since an
idle relay peer costs about 10 KiB in all. A displaced connection's session (if it has
one yet) is closed, then its socket, through trio, which wakes whatever task waits on it.
A refused connection gets a short HTTP answer (its request is read first, within
:data:`REFUSAL_TIMEOUT`, so the answer is not lost to a TCP reset) and holds no slot
meanwhile; at most :data:`MAX_REFUSING` are answered at
once, the rest are closed at once.

A relay that is *busy* (its pending table is full: a restart storm) is told apart from one
that is *full* (``max_sessions``): the busy answer is ``relay_busy`` with a ``Retry-After``
that gives each refused peer its own later slot, so a crowd is queued in time instead of
coming back all at once (:class:`RetrySchedule`).
"""

from __future__ import annotations

import logging
import resource
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import trio

from darkswap_trio.proto.signaling import Error, encode_message
from darkswap_trio.proto.websocket import build_http_response

from ._abuse import AbuseGuard
from ._config import LimitsConfig
from ._limits import ConcurrencyCounter, KeyedRateLimiter, canonical_ip
from ._metrics import RelayMetrics
from ._retry_schedule import RetrySchedule

__all__ = ["ConnectionAdmission", "ConnectionTicket", "raise_fd_limit"]

logger = logging.getLogger("relay.admission")

REFUSAL_TIMEOUT = 1.0  # seconds to read the refused request and send the answer
MAX_REFUSING = 64  # refusals answered at once; beyond, refused connections just close
_MAX_REFUSED_HEAD = 8 * 1024
PENALIZED = "abuse_penalty"  # the limit label of connections refused for a penalty
# File descriptors the relay needs besides its sessions: listeners, STUN, metrics
# connections, log files, the refusals in progress.
FD_MARGIN = 64 + MAX_REFUSING


class ConnectionTicket:
    """One admitted connection: its slot, and whether it is still pending.

    The connection is pending until it registers: until its owner calls
    :meth:`ConnectionAdmission.registered`, or a session that is registered already (a
    mesh link) is assigned to :attr:`session`. Told, not polled: the pending counts are
    exact without a scan of the table (a relay at its cap in a restart storm scanned
    every pending ticket for each newcomer: 8-10% of its CPU).
    """

    __slots__ = (
        "ip", "address", "accepted_at", "stream", "_session", "evicted", "released",
        "_on_registered",
    )  # fmt: skip

    def __init__(
        self,
        ip: str,
        address: tuple[str, int],
        accepted_at: float,
        stream: Any = None,
        on_registered: Callable[[ConnectionTicket], None] | None = None,
    ) -> None:
        self.ip = ip
        self.address = address  # the raw (host, port) the listener saw
        self.accepted_at = accepted_at
        self.stream = stream  # closed to evict the connection
        self._session: Any = None  # set once the session exists (closed on eviction)
        self.evicted = False
        self.released = False
        self._on_registered = on_registered

    @property
    def session(self) -> Any:
        return self._session

    @session.setter
    def session(self, value: Any) -> None:
        self._session = value
        if value is not None and getattr(value, "registered", False):
            if self._on_registered is not None:
                self._on_registered(self)

    @property
    def registered(self) -> bool:
        return self._session is not None and bool(self._session.registered)


def _close_socket(stream: Any) -> None:
    """Close a connection's socket from outside its task (trio wakes the waiters)."""
    sock = getattr(stream, "socket", None)
    if sock is None:
        sock = getattr(getattr(stream, "transport_stream", None), "socket", None)
    if sock is not None:
        sock.close()


class ConnectionAdmission:
    """Per-IP and total connection caps counted from accept, with pending eviction."""

    def __init__(
        self, limits: LimitsConfig, metrics: RelayMetrics, guard: AbuseGuard | None = None
    ) -> None:
        self.limits = limits
        self.metrics = metrics
        self.guard = guard  # its penalized addresses are closed at accept
        # 0 means no cap, for the per-IP and the total count alike.
        self.slots = ConcurrencyCounter(limits.max_sessions_per_ip, limits.max_sessions or None)
        self.rate = KeyedRateLimiter(
            limits.connections_per_ip_rate,
            limits.connections_per_ip_burst,
            limits.limiter_table_size,
        )
        # Pending tickets per IP, oldest first (dicts keep insertion order).
        self._pending: dict[str, OrderedDict[ConnectionTicket, None]] = {}
        self._pending_total = 0
        self._refusing = 0
        self.retry = RetrySchedule()  # Retry-After of the busy answers
        # Admitted connections by raw remote address, until the request handler takes
        # its ticket (take_ticket).
        self.tickets: dict[tuple[str, int], ConnectionTicket] = {}

    # -- bookkeeping (sync) ---------------------------------------------------------

    def pending(self, ip: str) -> int:
        return len(self._pending.get(ip, ()))

    @property
    def pending_total(self) -> int:
        return self._pending_total

    def registered(self, ticket: ConnectionTicket) -> None:
        """``ticket``'s session registered: it is no longer pending. Idempotent."""
        self._unpend(ticket)

    def _unpend(self, ticket: ConnectionTicket) -> None:
        tickets = self._pending.get(ticket.ip)
        if tickets is not None and ticket in tickets:
            del tickets[ticket]
            self._pending_total -= 1
            self.retry.exits += 1
            if not tickets:
                del self._pending[ticket.ip]

    def take_ticket(self, address: tuple[str, int]) -> ConnectionTicket | None:
        """The ticket of the connection from ``address`` (once: the handler keeps it)."""
        return self.tickets.pop(address, None)

    def release(self, ticket: object) -> None:
        """The connection is gone (or evicted): free its slot. Idempotent."""
        assert isinstance(ticket, ConnectionTicket)
        if ticket.released:
            return
        ticket.released = True
        if self.tickets.get(ticket.address) is ticket:
            del self.tickets[ticket.address]
        self._unpend(ticket)
        self.slots.release(ticket.ip)
        ticket.stream = ticket.session = None

    def _evict_for(self, ip: str) -> bool:
        """Displace the oldest pending connection of the heaviest other IP, if fair."""
        mine = self.pending(ip) + 1  # the newcomer's IP after admission
        heaviest, count = None, 0
        for other in list(self._pending):
            n = self.pending(other)
            if n > count:
                heaviest, count = other, n
        if heaviest is None or count <= mine:
            return False
        victim = next(iter(self._pending[heaviest]))
        victim.evicted = True
        stream, session = victim.stream, victim.session
        self.release(victim)
        if session is not None:
            # Its own close path (reason, metrics, task exit) rather than a read that
            # fails later: its reader may be busy elsewhere (a throttle) when we close.
            session.abort("evicted: the pending-connection table is full")
        _close_socket(stream)
        self.metrics.limit_hit("pending_evicted")
        logger.debug("evicted a pending connection from %s for one from %s", heaviest, ip)
        return True

    def try_admit(
        self, ip: str, now: float, address: tuple[str, int] = ("", 0), stream: Any = None
    ) -> ConnectionTicket | tuple[int, str, str, str]:
        """A ticket, or why not: ``(http_status, error_code, message, limit)``."""
        lim = self.limits
        if self.guard is not None and self.guard.penalized(ip, now):
            return 429, "rate_limited", "your address is penalized for abuse", PENALIZED
        if not self.rate.try_take(ip, 1, now):
            return (
                429,
                "rate_limited",
                "too many connections from your address",
                "connections_per_ip",
            )
        if lim.max_sessions_per_ip and self.slots.count(ip) >= lim.max_sessions_per_ip:
            return (
                503,
                "too_many_sessions",
                "too many sessions from your address",
                "sessions_per_ip",
            )
        if lim.max_pending_per_ip and self.pending(ip) >= lim.max_pending_per_ip:
            return (
                503, "too_many_sessions", "too many unregistered connections from your address",
                "pending_per_ip",
            )  # fmt: skip
        cap = lim.max_pending_connections
        if cap and self._pending_total >= cap:
            if not self._evict_for(ip):
                return 503, "relay_busy", "the relay is busy", "max_pending"
        if lim.max_sessions and self.slots.total >= lim.max_sessions:
            if not self._evict_for(ip):
                return 503, "too_many_sessions", "the relay is full", "max_sessions"
        if not self.slots.acquire(ip):  # pragma: no cover - checked above
            return 503, "too_many_sessions", "the relay is full", "max_sessions"
        ticket = ConnectionTicket(ip, address, now, stream, self.registered)
        self.tickets[address] = ticket
        self._pending.setdefault(ip, OrderedDict())[ticket] = None
        self._pending_total += 1
        return ticket

    # -- the listener's hook (async) ------------------------------------------------

    async def admit(
        self, stream: trio.abc.Stream, remote_address: tuple[str, int]
    ) -> ConnectionTicket | None:
        """Admit a just-accepted connection: its ticket, or None (refused and answered)."""
        try:
            ip = canonical_ip(str(remote_address[0]))
        except (ValueError, TypeError, IndexError):
            ip = str(remote_address[0]) if remote_address else ""
        outcome = self.try_admit(ip, trio.current_time(), remote_address, stream)
        if isinstance(outcome, ConnectionTicket):
            await trio.lowlevel.checkpoint()
            return outcome
        status, code, message, limit = outcome
        self.metrics.limit_hit(limit)
        if limit == PENALIZED:
            await trio.lowlevel.checkpoint()
            return None  # closed unread: the cheapest answer to an address that abused us
        self.metrics.error_sent(code)
        headers: tuple[tuple[str, str], ...] = ()
        if code == "relay_busy" and self._refusing < MAX_REFUSING:
            wait = self.retry.refused(self._pending_total, trio.current_time())
            headers = (("Retry-After", str(wait)),)
        await self._refuse(stream, status, code, message, headers)
        return None

    async def _refuse(
        self,
        stream: trio.abc.Stream,
        status: int,
        code: str,
        message: str,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        if self._refusing >= MAX_REFUSING:
            return  # a flood: close without an answer (the caller closes the stream)
        self._refusing += 1
        try:
            with trio.move_on_after(REFUSAL_TIMEOUT):
                head = b""
                while b"\r\n\r\n" not in head and len(head) < _MAX_REFUSED_HEAD:
                    data = await stream.receive_some(4096)
                    if not data:
                        break
                    head += data
                body = encode_message(Error(message, code)).encode()
                await stream.send_all(
                    build_http_response(
                        status, body, content_type="application/json", extra_headers=headers
                    )
                )
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self._refusing -= 1


def raise_fd_limit(limits: LimitsConfig) -> tuple[int, int]:
    """Raise the soft open-file limit to the hard one; cap ``max_sessions`` to fit.

    A relay past its fd limit fails every accept (honest peers and /metrics alike), so
    sessions are capped below it: beyond, peers get a clean 503 instead. Returns the
    (soft, hard) limits now in force. Logs a warning when ``max_sessions`` was lowered.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            logger.warning("cannot raise the open-file limit from %d to %d: %s", soft, hard, exc)
    if soft == resource.RLIM_INFINITY:
        return soft, hard
    budget = max(soft - FD_MARGIN, 1)
    if not limits.max_sessions or limits.max_sessions > budget:
        logger.warning(
            "max_sessions %s does not fit the open-file limit %d (minus %d spare): "
            "using max_sessions = %d; raise `ulimit -n` to allow more",
            limits.max_sessions or "unlimited", soft, FD_MARGIN, budget,
        )  # fmt: skip
        limits.max_sessions = budget
    return soft, hard
