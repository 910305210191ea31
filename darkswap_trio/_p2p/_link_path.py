"""The parts of a PeerLink: its settings, statistics and paths (each with its reader
and writer tasks)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from .._relay_client._circuit import CircuitClosedError, RelayCircuit
from ..proto.link import DATA, LinkCore, LinkFrameError, LinkStatistics, parse_hello_untrusted
from ._direct import DirectConnection

AnyPeerLink = Any  # a _peer_link.PeerLink, named without an import cycle

_DIRECT_FRAME_CAP = 256 * 1024  # larger DATA frames only add SCTP reassembly latency
_RELAY_FRAME_FALLBACK = 16 * 1024  # a relay that announces no max_data_frame


class LinkOwner(Protocol):
    """What a link needs from its owner (the network): path restoration and events."""

    def link_upgraded(self, link: AnyPeerLink) -> None: ...
    def link_downgraded(self, link: AnyPeerLink, reason: str) -> None: ...
    def link_interrupted(self, link: AnyPeerLink, reason: str) -> None: ...
    def link_restored(self, link: AnyPeerLink) -> None: ...
    def link_circuit_closed(self, link: AnyPeerLink, circuit: RelayCircuit) -> None: ...
    def link_closed(self, link: AnyPeerLink, reason: str) -> None: ...
    def link_needs_relay(self, link: AnyPeerLink) -> None: ...
    def link_wants_direct(self, link: AnyPeerLink) -> None: ...


@dataclass(frozen=True)
class LinkSettings:
    """Per-link protocol settings (from P2PConfig)."""

    max_message_size: int = 1 << 20
    window: int = 4 << 20
    ping_interval: float = 1.0
    path_timeout: float = 3.0
    recovery_timeout: float = 30.0


@dataclass(frozen=True)
class PeerLinkStatistics:
    """Counters of one link (a snapshot)."""

    peer_id: str
    connection_type: str
    unacked_bytes: int
    fragments_sent: int
    fragments_retransmitted: int
    bytes_retransmitted: int
    duplicates_dropped: int
    pings_sent: int
    upgrades: int
    downgrades: int
    interruptions: int  # times the link had no path at all

    @classmethod
    def of(cls, link: _CountedLink, core: LinkStatistics) -> PeerLinkStatistics:
        return cls(
            peer_id=link.peer_id,
            connection_type=link.connection_type,
            unacked_bytes=core.unacked_bytes,
            fragments_sent=core.fragments_sent,
            fragments_retransmitted=core.fragments_retransmitted,
            bytes_retransmitted=core.bytes_retransmitted,
            duplicates_dropped=core.duplicates_dropped,
            pings_sent=core.pings_sent,
            upgrades=link.upgrades,
            downgrades=link.downgrades,
            interruptions=link.interruptions,
        )


class _CountedLink(Protocol):
    peer_id: str
    upgrades: int
    downgrades: int
    interruptions: int

    @property
    def connection_type(self) -> str: ...


@dataclass(frozen=True, slots=True)
class PathHooks:
    """What a path's reader and writer tasks need of their link."""

    hello: Callable[[], bytes]  # our HELLO, sent first on a path the far side opened
    # the next frame to send on the named path, or the event to wait for first
    poll_frame: Callable[[str], bytes | trio.Event]
    frame_received: Callable[[LinkPath, bytes | memoryview], None]
    hello_received: Callable[[bytes], None]  # raises LinkFrameError for a foreign one
    violated: Callable[[LinkPath, LinkFrameError], None]  # the far side broke the protocol


class LinkPath:
    """One attached path: its channel, its tasks' cancel scope, its name in the core."""

    def __init__(
        self,
        name: str,
        kind: str,
        channel: RelayCircuit | DirectConnection,
        *,
        accepted: bool = False,
    ) -> None:
        self.accepted = accepted  # the far side opened it: our HELLO answers its HELLO
        self.name = name
        self.kind = kind
        self.channel = channel
        self.scope = trio.CancelScope()
        self.heard = False  # the far side sent us something on it
        self.reason = "path closed"
        # The writer waits for a frame: another task may write for it (write_now).
        self.writer_idle = False
        self.unsent: bytes | None = None  # handed back by write_now: the writer sends it first
        self.flush_due = False  # write_now left part of a frame in the session: finish it

    async def send(self, frame: bytes) -> None:
        if isinstance(self.channel, RelayCircuit):
            await self.channel.send(frame)
        else:
            await self.channel.channel.send(frame)

    async def receive(self) -> bytes:
        if isinstance(self.channel, RelayCircuit):
            return await self.channel.receive()
        message = await self.channel.channel.receive()
        return message.encode() if isinstance(message, str) else message

    def frame_limit(self) -> int:
        """The largest frame this path carries: the circuit's max_data_frame, or the
        peer's a=max-message-size on the data channel (capped)."""
        if isinstance(self.channel, RelayCircuit):
            return self.channel.limits.max_data_frame or _RELAY_FRAME_FALLBACK
        remote = self.channel.peer_connection.remote_max_message_size or 65536
        return min(remote, _DIRECT_FRAME_CAP)

    def write_now(self, core: LinkCore, now: float, wake_writer: Callable[[], None]) -> bool:
        """Write the path's frames from the calling task while its writer is idle, when
        the circuit takes them at once (credit, a free session): no task switch.

        A frame the core hands out counts as sent, so one the circuit does not take (or
        fails on) is handed to the writer, which is woken to send it first (and to meet
        the failure, which ends the path as usual). Only the first DATA frame may be
        short: the short tail of a long message is left to the writer, which sends it
        with what the sender queued meanwhile (a stream of 64 KiB messages then goes in
        full frames, not in two frames per message).

        False: nothing was done (the writer is busy, or the path is not a circuit).
        """
        channel = self.channel
        if not self.writer_idle or not isinstance(channel, RelayCircuit):
            return False
        short = True
        while (frame := core.poll_transmit(self.name, now, short=short)) is not None:
            short = short and frame[0] != DATA
            try:
                taken = channel.try_send_nowait(frame)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                taken = False
            if not taken:
                self.unsent = frame
                break
            if channel.flush_needed:
                self.flush_due = True
                break
            if not core.wants_transmit(self.name, now):
                return True  # (the usual end: one poll less than polling to None)
        else:
            # (a short poll that found nothing leaves nothing: only a held-back tail)
            if short or not core.wants_transmit(self.name, now):
                return True
        self.writer_idle = False
        wake_writer()
        return True

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(2):
            await self.channel.aclose()

    # -- tasks -------------------------------------------------------------------------

    async def run(self, hooks: PathHooks) -> None:
        """Read and write until either side of the path ends; why is in :attr:`reason`."""
        with self.scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._guard, hooks, self._write, nursery.cancel_scope)
                await self._guard(hooks, self._read, nursery.cancel_scope)

    async def _guard(
        self,
        hooks: PathHooks,
        task: Callable[[PathHooks], Awaitable[None]],
        scope: trio.CancelScope,
    ) -> None:
        """Run the reader or the writer; whatever ends it ends the path (not the link)."""
        try:
            await task(hooks)
        except trio.EndOfChannel:
            self.reason = self._ended_reason()
        except CircuitClosedError:
            self.reason = self._ended_reason()  # reader and writer agree on why (the reason)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # A circuit's writer can meet the dead relay connection before its reader
            # sees the end: the same event, so the same reason (LinkInterrupted).
            relayed = isinstance(self.channel, RelayCircuit)
            self.reason = "relay connection lost" if relayed else f"path broken: {exc}"
        except LinkFrameError as exc:
            hooks.violated(self, exc)
        scope.cancel()

    async def _read(self, hooks: PathHooks) -> None:
        frame_received, hello_received = hooks.frame_received, hooks.hello_received
        if isinstance(self.channel, RelayCircuit):
            # Frames are handled in the session's reader task as they arrive (no switch
            # to this task); this task only returns credit and meets the circuit's end.
            def deliver(frame: bytes | memoryview) -> None:
                if frame[:1] == b"\x00":
                    hello_received(bytes(frame))
                else:
                    frame_received(self, frame)

            await self.channel.deliver_to(deliver)
            return
        while True:
            frame = await self.receive()
            if frame[:1] == b"\x00":
                hello_received(frame)
            else:
                frame_received(self, frame)

    async def _write(self, hooks: PathHooks) -> None:
        if self.accepted:
            await self.send(hooks.hello())
        poll_frame, name = hooks.poll_frame, self.name
        while True:
            if self.flush_due:
                self.flush_due = False
                assert isinstance(self.channel, RelayCircuit)
                await self.channel.flush()
            frame: bytes | trio.Event
            if self.unsent is not None:
                frame, self.unsent = self.unsent, None
            else:
                frame = poll_frame(name)
            if isinstance(frame, trio.Event):
                self.writer_idle = True
                try:
                    await frame.wait()
                finally:
                    self.writer_idle = False
            else:
                await self.send(frame)

    def _ended_reason(self) -> str:
        """Why the channel ended cleanly. A circuit also ends when the relay session dies
        (the relay crashed or restarted): say so, not "the far side" (LinkInterrupted)."""
        if not isinstance(self.channel, RelayCircuit):
            return "path ended by the far side"
        why = self.channel.close_reason or "closed"
        if why == "session_closed":
            return "relay connection lost"
        return f"relay circuit closed: {why}"


def check_hello(frame: bytes, link_id: bytes, remote_link_id: bytes | None) -> bytes:
    """The far side's link id from its HELLO; LinkFrameError if it is not one of ours."""
    hello = parse_hello_untrusted(frame)
    if hello is None:
        raise LinkFrameError("malformed HELLO")
    sender, receiver = hello
    if receiver not in (None, link_id) or remote_link_id not in (None, sender):
        raise LinkFrameError("HELLO of another link")
    return sender


class LinkPaths:
    """A link's paths: at most one relay circuit and one direct connection, each named
    (``relay-1``, ``direct-2``, ...) as the link core knows it."""

    def __init__(self) -> None:
        self.relay: LinkPath | None = None
        self.direct: LinkPath | None = None
        self.last_circuit: RelayCircuit | None = None  # the relay path's, kept once closed
        self._count = 0

    @property
    def direct_connection(self) -> DirectConnection | None:
        channel = self.direct.channel if self.direct is not None else None
        return channel if isinstance(channel, DirectConnection) else None

    def add_relay(self, circuit: RelayCircuit) -> LinkPath:
        """The relay path is now ``circuit`` (the caller dropped the old one)."""
        self.last_circuit = circuit
        self.relay = self._new("relay", circuit, accepted=not circuit.initiator)
        return self.relay

    def add_direct(self, connection: DirectConnection, *, accepted: bool) -> LinkPath:
        self.direct = self._new("direct", connection, accepted=accepted)
        return self.direct

    def remove(self, run: LinkPath) -> bool:
        """Forget ``run``; False if it is not one of the paths (already replaced)."""
        if run is self.relay:
            self.relay = None
        elif run is self.direct:
            self.direct = None
        else:
            return False
        return True

    def write_now(self, core: LinkCore, now: float, wake_writer: Callable[[], None]) -> bool:
        """Write the active path's frames from the calling task if its writer is idle;
        False: nothing was done (the caller wakes the writers that have frames)."""
        run = self.named(core.active) if core.active is not None else None
        return run is not None and run.writer_idle and run.write_now(core, now, wake_writer)

    def named(self, name: str) -> LinkPath | None:
        for run in (self.relay, self.direct):
            if run is not None and run.name == name:
                return run
        return None

    def _new(
        self, kind: str, channel: RelayCircuit | DirectConnection, *, accepted: bool
    ) -> LinkPath:
        self._count += 1
        return LinkPath(f"{kind}-{self._count}", kind, channel, accepted=accepted)
