"""PeerLink: one ordered, reliable message channel to a peer that outlives its paths.

The trio driver around :class:`darkswap_trio.proto.link.LinkCore` (the wire protocol
and the resumption rule live there and in docs/PROTOCOL.md, "PeerLink protocol").
A link has at most one relay circuit and one direct data channel at a time, each with
a reader and a writer task in the link's own nursery (a circuit's frames are handled in
the relay session's reader and written by the sender while the writer is idle: see
_link_path.py). Our DATA goes on the preferred path (direct when there is one); when that
choice changes, the core resends everything unacknowledged on the new path, so a path can
die at any moment without losing, duplicating or reordering a message.

What the network (the link's owner) does for it, through :class:`LinkOwner`: open a
fresh relay circuit when the link has no path left or lost its direct one
(``link_needs_relay``), retry the direct path later (``link_wants_direct``) and turn
state changes into network events.
"""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import Callable

import trio

from .._relay_client._circuit import RelayCircuit
from ..proto import link as events  # PathDead, RemoteReset...: what LinkCore.poll_event gives
from ..proto.link import LINK_ID_SIZE, LinkCore, LinkFrameError, MessageTooLarge, encode_hello
from ._direct import DirectConnection
from ._link_path import (
    LinkOwner,
    LinkPath,
    LinkPaths,
    LinkSettings,
    PathHooks,
    PeerLinkStatistics,
    check_hello,
)
from ._metrics import ConnectionMetrics, link_metrics

__all__ = ["LinkOwner", "LinkSettings", "MessageTooLarge", "PeerLink", "PeerLinkStatistics"]

log = logging.getLogger("darkswap_trio.peer_link")

# Messages starting with this belong to the link's internal channels (topics: see
# _topics.py), never to the application: ``send`` refuses them.
RESERVED_PREFIX = b"\x00darkswap-"
_QUICK_SENDS_PER_YIELD = 8
_CLOSE_LINGER = 2.0  # seconds aclose() waits for the far side to acknowledge our last bytes


class PeerLink(trio.abc.Channel[bytes]):
    """An ordered, reliable message channel to ``peer_id`` over relay and direct paths.

    Made by :class:`~darkswap_trio.P2PNetwork` (``connect_to_peer`` / ``accept_peer``).
    Messages up to ``max_message_size`` (1 MiB by default, ``P2PConfig.link_max_message_size``)
    pass on either path; a larger one raises :class:`MessageTooLarge` (a ValueError)
    before anything is sent. ``send`` returns once the message is in the link's window
    and waits while the window is full; it raises BusyResourceError for concurrent
    senders, ClosedResourceError after ``aclose`` and BrokenResourceError once the link
    is over (the far side closed, or no path came back within ``recovery_timeout``).
    ``receive`` raises EndOfChannel when the far end closed the link.
    """

    def __init__(
        self,
        peer_id: str,
        nursery: trio.Nursery,
        owner: LinkOwner,
        *,
        local_peer_id: str = "",
        settings: LinkSettings | None = None,
        link_id: bytes | None = None,
    ) -> None:
        self.peer_id = peer_id
        # Names this link on both sides (in the HELLO of each path), so a path of a
        # new link to the same peer is never taken for one of an old link.
        self.link_id = link_id or secrets.token_bytes(LINK_ID_SIZE)
        self.remote_link_id: bytes | None = None  # the far side's, from its first HELLO
        self.local_peer_id = local_peer_id
        self.settings = settings or LinkSettings()
        s = self.settings
        self._owner = owner
        self._core = LinkCore(
            max_message_size=s.max_message_size,
            window=s.window,
            ping_interval=s.ping_interval,
            path_timeout=s.path_timeout,
        )
        self.max_message_size = s.max_message_size
        self._paths = LinkPaths()
        self._pending: list[LinkPath] = []  # attached before the link's nursery ran
        self._nursery: trio.Nursery | None = None
        # state changed: for send/receive/close waiters (a lot, not an Event per change)
        self._waiters = trio.lowlevel.ParkingLot()
        self._wait_change = self._waiters.park  # (for _link_recovery too)
        self._receiver: trio.lowlevel.Task | None = None  # receive() parked alone (no lot)
        self._now = trio.lowlevel.current_clock().current_time  # (2 calls less than trio's)
        self._tx_wake = trio.Event()  # a path has a frame to send: for the writers
        # The timer task sleeps until _timer_at and is woken early only when a deadline
        # moves before it (not on every message): a later deadline is found on waking.
        self._timer_wake = trio.Event()
        self._timer_at = -math.inf  # not sleeping yet
        self._hooks = PathHooks(
            lambda: self.hello,
            self._poll_frame,
            self._frame_received,
            self._receive_hello,
            self._path_violated,
        )
        self._path_ready = trio.Event()
        self._run_scope = trio.CancelScope()
        self._sending = self._receiving = False
        self._quick_sends = 0  # sends since the last schedule point
        self._quick_receives = 0  # receives (of a message ready at once) since one
        self._channel: tuple[bytes, Callable[[PeerLink, bytes], None]] | None = None
        self._closed = False  # aclose() was called
        self._ended = False  # the link is over (either side)
        self._end_reason: str | None = None
        self._pathless_since: float | None = None
        self._lost_direct_pending = False  # tell the far side on the next relay circuit
        self._interrupted = False  # LinkInterrupted was reported, LinkRestored is due
        self.relay_rtt_ms: Callable[[], float | None] = lambda: None
        self.upgraded = False
        self.upgrades = self.downgrades = self.interruptions = 0
        self.established_at = trio.current_time()
        self.last_activity = self.established_at
        self.bytes_sent = self.bytes_received = 0
        self.messages_sent = self.messages_received = 0
        self.relay_bytes_sent = self.direct_bytes_sent = 0
        nursery.start_soon(self._run)

    # -- paths (called by the network) ----------------------------------------------

    @property
    def circuit(self) -> RelayCircuit | None:
        """The relay circuit in use, else the last one the link had (closed), else None."""
        return self._paths.last_circuit

    @property
    def direct(self) -> DirectConnection | None:
        return self._paths.direct_connection

    @property
    def has_direct(self) -> bool:
        return self._paths.direct is not None

    @property
    def has_relay(self) -> bool:
        return self._paths.relay is not None

    @property
    def interrupted(self) -> bool:
        """The relay path died with no direct path (LinkInterrupted, no LinkRestored yet)."""
        return self._interrupted

    @property
    def hello(self) -> bytes:
        """Our first message on every path: LINK_HELLO, our link id, the far side's."""
        return encode_hello(self.link_id, self.remote_link_id)

    def attach_relay(self, circuit: RelayCircuit) -> bool:
        """Use ``circuit`` as the relay path; False if the link keeps the one it has.

        Both sides may open a circuit at once (after a path died): of two live link
        circuits, the one whose opener has the lower PeerId wins on both sides; of two
        opened by the same side, the newer (its opener gave up on the older one).
        """
        if self._ended or circuit.closed:
            return False
        old = self._paths.relay
        # (a relay path's channel is always a RelayCircuit)
        if old is not None and isinstance(old.channel, RelayCircuit) and not old.channel.closed:
            if self._opener(circuit) > self._opener(old.channel):
                return False
            self._drop_path(old)
        self._add_path(self._paths.add_relay(circuit))
        return True

    def attach_direct(self, connection: DirectConnection, *, accepted: bool = False) -> bool:
        """Use ``connection`` as the direct path (and send on it); False if we have one.

        ``accepted``: the far side opened it (we answer its HELLO with ours).
        """
        if self._ended or self._paths.direct is not None:
            return False
        self._add_path(self._paths.add_direct(connection, accepted=accepted))
        return True

    async def wait_ready(self) -> None:
        """Wait until the link can send (a path is attached)."""
        await self._path_ready.wait()

    async def wait_direct(self) -> None:
        """Wait until the link sends on the direct path; BrokenResourceError if it ends first."""
        while self.connection_type != "direct":
            if self._ended:
                raise trio.BrokenResourceError(f"link to {self.peer_id} ended before going direct")
            await self._wait_change()
        await trio.lowlevel.checkpoint()

    # -- trio Channel ------------------------------------------------------------------

    @property
    def connection_type(self) -> str:
        direct = self._paths.direct
        return "direct" if direct is not None and self._core.active == direct.name else "relay"

    @property
    def closed(self) -> bool:
        """The link is over, or closing (aclose was called)."""
        return self._ended or self._closed

    async def send(self, value: bytes) -> None:
        if self._sending:
            raise trio.BusyResourceError("another task is already sending on this link")
        data = bytes(value)
        if data.startswith(RESERVED_PREFIX):
            raise ValueError(
                f"messages starting with {RESERVED_PREFIX!r} are reserved for the link's channels"
            )
        self._sending = True
        try:
            await self._send(data)
        finally:
            self._sending = False

    async def send_channel(self, data: bytes) -> None:
        """Send one message of an internal channel (its prefix included) beside the
        application's: no BusyResourceError with a concurrent ``send``."""
        await self._send(data)

    def set_channel(self, prefix: bytes, deliver: Callable[[PeerLink, bytes], None]) -> None:
        """Hand every received message that starts with ``prefix`` (a reserved one) to
        ``deliver(link, rest)`` as it arrives, instead of to ``receive``."""
        assert prefix.startswith(RESERVED_PREFIX)
        self._channel = (prefix, deliver)
        self._take_channel(trio.current_time())

    def _take_channel(self, now: float) -> None:
        if self._channel is None:
            return
        prefix, deliver = self._channel
        messages = self._core.take_prefixed(prefix, now)
        if messages:
            self._consumed()
            self.bytes_received += sum(map(len, messages))
            self.last_activity = now
            for message in messages:
                deliver(self, message[len(prefix) :])

    async def _send(self, data: bytes) -> None:
        self._core.check_size(len(data))
        self._check_sendable()
        # A schedule point every few sends (as the session writer's), before queueing
        self._quick_sends = (self._quick_sends + 1) % _QUICK_SENDS_PER_YIELD
        if self._quick_sends == 0:
            await trio.lowlevel.checkpoint()
        else:
            await trio.lowlevel.checkpoint_if_cancelled()  # yields only when cancelled
        while True:
            self._check_sendable()
            if self._core.can_queue(len(data)):
                break
            await self._wait_change()
        self._core.queue_message(data)
        if self.connection_type == "direct":
            self.direct_bytes_sent += len(data)
        else:
            self.relay_bytes_sent += len(data)
        self.bytes_sent += len(data)
        self.messages_sent += 1
        now = self.last_activity = self._now()
        if not self._paths.write_now(self._core, now, self._wake_writers):
            self._kick(now, sent=True)

    def _check_sendable(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("link was closed locally")
        if self._ended:
            raise trio.BrokenResourceError(f"link to {self.peer_id} is over: {self._end_reason}")

    async def receive(self) -> bytes:
        if self._receiving:
            raise trio.BusyResourceError("another task is already receiving on this link")
        self._receiving = True
        waited = False
        core = self._core
        try:
            # Cancelled: before anything is taken (a cancelled receive loses nothing)
            await trio.lowlevel.checkpoint_if_cancelled()
            while True:
                if self._closed:
                    raise trio.ClosedResourceError("link was closed locally")
                if core.message_ready:
                    now = self.last_activity = self._now()
                    message = core.next_message(now)
                    assert message is not None
                    self._consumed()
                    self.bytes_received += len(message)
                    self.messages_received += 1
                    # a schedule point every 8 receives that did not wait (shielded: taken)
                    self._quick_receives = (self._quick_receives + 1) % _QUICK_SENDS_PER_YIELD
                    if not waited and self._quick_receives == 0:
                        await trio.lowlevel.cancel_shielded_checkpoint()
                    return message
                if core.remote_finished:
                    raise trio.EndOfChannel
                if self._ended:
                    raise trio.BrokenResourceError(
                        f"link to {self.peer_id} is over: {self._end_reason}"
                    )
                self._receiver = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(self._abort_receive)
                waited = True
        finally:
            self._receiving = False

    def _abort_receive(self, _: object) -> trio.lowlevel.Abort:
        self._receiver = None  # (nothing was taken: a cancelled receive loses nothing)
        return trio.lowlevel.Abort.SUCCEEDED

    async def aclose(self) -> None:
        """Close the link: the far side reads what we sent, then EndOfChannel. Idempotent.

        Waits (at most 2 s) for the far side to confirm it has our whole stream.
        """
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        self._closed = True
        if not self._ended:
            self._core.close()
            self._kick()
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_LINGER):
                while (
                    not self._ended
                    and self._core.active is not None
                    and not self._core.close_confirmed
                ):
                    await self._wait_change()
        self._end("closed locally")
        await self._close_paths()

    def metrics(self) -> ConnectionMetrics:
        """A snapshot of this link's counters and of the active path's RTT and loss.

        ``relay_bytes_sent``/``direct_bytes_sent`` count application bytes by the path
        the link was on when they were sent (resent fragments are in statistics()).
        """
        return link_metrics(self)

    def statistics(self) -> PeerLinkStatistics:
        """Protocol counters: resent fragments, dropped duplicates, path changes."""
        return PeerLinkStatistics.of(self, self._core.statistics())

    def __repr__(self) -> str:
        return f"<PeerLink to {self.peer_id} {self.connection_type} closed={self.closed}>"

    # -- internals ---------------------------------------------------------------------

    def _kick(self, now: float | None = None, *, sent: bool = False, timers: bool = True) -> None:
        # sent: only a message was queued (that wakes no waiter and moves no deadline)
        if not sent:
            if self._waiters:
                self._waiters.unpark_all()
            receiver = self._receiver
            if receiver is not None:
                self._receiver = None
                trio.lowlevel.reschedule(receiver)
        # Only an idle writer with a frame is woken (a busy one polls again anyway)
        now = self._now() if now is None else now
        for run in (self._paths.relay, self._paths.direct):
            if run is not None and run.writer_idle and self._core.wants_transmit(run.name, now):
                self._wake_writers()
                break
        if sent or not timers:
            return
        if self._timer_at > -math.inf and self._next_deadline() < self._timer_at:
            self._timer_at = -math.inf
            self._timer_wake.set()

    def _consumed(self) -> None:
        """Messages were taken: the delayed-ACK timer starts, or a writer wakes (ACK now)."""
        deadline = self._core.ack_deadline
        if deadline is not None and deadline < self._timer_at:
            self._timer_at = -math.inf
            self._timer_wake.set()
        if self._core.ack_urgent:
            self._kick()

    def _wake_writers(self) -> None:
        self._tx_wake.set()
        self._tx_wake = trio.Event()

    def _next_deadline(self) -> float:
        deadline = self._core.poll_timeout()
        if self._pathless_since is not None:
            recovery = self._pathless_since + self.settings.recovery_timeout
            deadline = recovery if deadline is None else min(deadline, recovery)
        return math.inf if deadline is None else deadline

    def _opener(self, circuit: RelayCircuit) -> str:
        return self.local_peer_id if circuit.initiator else self.peer_id

    def _add_path(self, run: LinkPath) -> None:
        self._core.add_path(
            run.name, run.frame_limit(), trio.current_time(), watched=run.kind == "direct"
        )
        if run.kind == "relay" and self._lost_direct_pending:
            self._lost_direct_pending = False
            self._core.report_direct_lost(run.name)
        if self._nursery is None:
            self._pending.append(run)
        else:
            self._nursery.start_soon(self._run_path, run)
        self._choose_active()

    def _choose_active(self) -> None:
        """Send on direct if we have it, else relay; a change resends what is unacked."""
        best = self._paths.direct or self._paths.relay
        if best is None:
            if self._pathless_since is None and not self._ended:
                self._pathless_since = trio.current_time()
            return
        if self._core.active == best.name:
            return
        previous = self._core.active
        self._core.use_path(best.name)
        self._path_ready.set()
        self._pathless_since = None
        if self._interrupted:
            self._interrupted = False
            self._owner.link_restored(self)
        if best.kind == "direct":
            if previous is not None or self._paths.relay is not None:
                self.upgraded = True
                self.upgrades += 1
                self._owner.link_upgraded(self)
            self._maybe_retire_relay()
        self._kick()

    def _drop_path(self, run: LinkPath, *, close: bool = True) -> None:
        """Forget ``run`` (its tasks stop; the channel is closed in the background)."""
        if not self._paths.remove(run):
            return
        self._core.remove_path(run.name)
        run.scope.cancel()
        if close and self._nursery is not None:
            self._nursery.start_soon(run.aclose)
        if isinstance(run.channel, RelayCircuit):
            self._owner.link_circuit_closed(self, run.channel)

    def _path_failed(self, run: LinkPath, reason: str) -> None:
        paths = self._paths
        if run is not paths.relay and run is not paths.direct:
            return  # already replaced or retired
        self._drop_path(run)
        if self._ended or self._closed:
            return
        if self._core.remote_closed:
            self._end("closed by the far side")
            self._run_scope.cancel()
            return
        if run.kind == "direct":
            self.downgrades += 1
            log.info("link to %s lost its direct path: %s", self.peer_id, reason)
            self._owner.link_downgraded(self, reason)
            self._owner.link_wants_direct(self)
            if paths.relay is not None:
                self._core.report_direct_lost(paths.relay.name)
            else:
                self._lost_direct_pending = True
        elif paths.direct is None:
            # The relay path died and there is no direct one: the link is interrupted
            # (a lost direct path is a downgrade, even while its circuit is reopened).
            self.interruptions += 1
            self._interrupted = True
            self._owner.link_interrupted(self, reason)
        if paths.relay is None and paths.direct is None:
            self._owner.link_needs_relay(self)
        self._choose_active()
        self._kick()

    async def _run(self) -> None:
        try:
            with self._run_scope:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    for run in self._pending:
                        nursery.start_soon(self._run_path, run)
                    self._pending.clear()
                    nursery.start_soon(self._run_timers)
        finally:
            self._end(self._end_reason or "link stopped")
            self._nursery = None
            with trio.CancelScope(shield=True):
                await self._close_paths()

    async def _run_timers(self) -> None:
        core = self._core
        while True:
            deadline = self._next_deadline()
            self._timer_wake = trio.Event()
            self._timer_at = deadline
            with trio.move_on_at(deadline):
                await self._timer_wake.wait()
            self._timer_at = -math.inf
            now = trio.current_time()
            if now < self._next_deadline():
                continue  # woken for an earlier deadline, or one moved later: sleep again
            core.handle_timeout(now)
            self._handle_events()
            if (
                self._pathless_since is not None
                and now >= self._pathless_since + self.settings.recovery_timeout
            ):
                self._end(f"no path for {self.settings.recovery_timeout:g} s")
                self._run_scope.cancel()
                return
            self._kick()

    def _handle_events(self) -> None:
        while (event := self._core.poll_event()) is not None:
            if isinstance(event, events.PathDead):
                run = self._paths.named(event.path)
                if run is not None:
                    self._path_failed(run, event.reason)
            elif isinstance(event, events.RemoteLostDirect):
                if self._paths.direct is not None:
                    self._path_failed(self._paths.direct, "the far side lost the direct path")
            elif isinstance(event, events.RemoteClosed):
                self._kick()
            elif isinstance(event, events.RemoteReset):
                self._end("the far side no longer has this link")
                self._run_scope.cancel()

    async def _run_path(self, run: LinkPath) -> None:
        await run.run(self._hooks)
        self._path_failed(run, run.reason)

    def _poll_frame(self, path: str) -> bytes | trio.Event:
        wake = self._tx_wake  # before polling: a kick in between is not missed
        frame = self._core.poll_transmit(path, self._now())
        return wake if frame is None else frame

    def _frame_received(self, run: LinkPath, frame: bytes | memoryview) -> None:
        now = self._now()
        self._core.receive_frame(run.name, frame, now)
        if self._core.channel_message_ready:
            self._take_channel(now)
        if not run.heard:
            run.heard = True
            self._maybe_retire_relay()
        self._handle_events()
        # (a frame moves no deadline earlier: the timer is left alone)
        self._kick(now, timers=False)

    def _receive_hello(self, frame: bytes) -> None:
        self.remote_link_id = check_hello(frame, self.link_id, self.remote_link_id)

    def _path_violated(self, run: LinkPath, exc: LinkFrameError) -> None:
        log.warning(
            "link %s->%s (%s) broken by the far side on %s: %s",
            self.local_peer_id[-6:],
            self.peer_id[-6:],
            self.link_id.hex()[:8],
            run.name,
            exc,
        )
        self._end(f"protocol violation: {exc}")
        self._run_scope.cancel()

    def _maybe_retire_relay(self) -> None:
        """Close the relay circuit once both sides send direct (it only costs the relay);
        safe at any time: what was in flight on it is unacknowledged, so resent direct."""
        relay, direct = self._paths.relay, self._paths.direct
        if relay is None or direct is None or not direct.heard or self._core.active != direct.name:
            return
        self._drop_path(relay)

    def _end(self, reason: str) -> None:
        if self._ended:
            return
        self._ended = True
        self._end_reason = reason
        self._path_ready.set()
        self._kick()
        self._owner.link_closed(self, reason)

    async def _close_paths(self) -> None:
        self._run_scope.cancel()
        for run in (self._paths.relay, self._paths.direct):
            if run is not None:
                self._drop_path(run, close=False)
                await run.aclose()
