"""trio driver for the sans-IO DTLS endpoint: :class:`DtlsTransport`.

Runs :class:`~darkswap_trio.proto.dtls._endpoint.DtlsEndpoint` over any datagram transport
(the ICE transport in production, a UDP socket adapter in tests). One nursery,
owned by the :class:`DtlsTransport` context manager, holds two tasks:

* ``network reader``: ``transport.receive()`` -> the core's inbox;
* ``core owner``: the only task that touches the endpoint. It sleeps until its
  inbox has something (a datagram, data to send, a close request) or the
  endpoint's retransmission deadline passes, then sends whatever the endpoint
  wants sent and dispatches its events.

Buffers are bounded: the inbox applies backpressure to the reader and to
:meth:`DtlsTransport.send`; received application data waits in a bounded
channel and is dropped (and counted) when the application does not keep up,
exactly as a UDP socket buffer would — DTLS is unreliable, and SCTP above it
retransmits.
"""

from __future__ import annotations

import contextlib
import datetime
import math
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Protocol

import trio

from ..proto.dtls import (
    Closed,
    DataReceived,
    DtlsCertificate,
    DtlsEndpoint,
    DtlsState,
    DtlsStatistics,
    Failed,
    HandshakeComplete,
)
from ..proto.errors import DtlsParseError

__all__ = [
    "DatagramTransport",
    "DtlsError",
    "DtlsTransport",
    "DtlsTransportStatistics",
    "generate_dtls_certificate",
]

# How long aclose() may spend telling the peer (close_notify), even when cancelled.
_CLOSE_GRACE = 0.5


class DatagramTransport(Protocol):
    """What DTLS runs over: an ICE transport, or a connected UDP socket adapter."""

    async def send(self, datagram: bytes) -> None: ...

    async def receive(self) -> bytes: ...


class DtlsError(Exception):
    """Why a DTLS transport broke (chained as the cause of BrokenResourceError)."""


@dataclass(frozen=True)
class DtlsTransportStatistics:
    """Snapshot of the driver and its endpoint."""

    dtls: DtlsStatistics
    received_buffered: int
    received_dropped: int


def generate_dtls_certificate() -> DtlsCertificate:
    """A fresh self-signed ECDSA P-256 certificate valid around the current wall-clock time."""
    return DtlsCertificate.generate(datetime.datetime.now(datetime.UTC))


@dataclass(frozen=True)
class _Outgoing:
    data: bytes


@dataclass(frozen=True)
class _TransportGone:
    error: BaseException


class _CloseRequest:
    pass


_CLOSE = _CloseRequest()


class DtlsTransport:
    """A DTLS association over a datagram transport, as an async context manager.

    ``async with DtlsTransport(transport, "client", cert, [("sha-256", fp)]) as dtls``
    returns once the handshake completed and the peer's fingerprint matched;
    otherwise it raises :class:`trio.BrokenResourceError` (cause: :class:`DtlsError`
    or the transport's error). Then :meth:`send` / :meth:`receive` carry one
    datagram-sized message each.

    Raises: :class:`trio.ClosedResourceError` after :meth:`aclose`;
    :class:`trio.BrokenResourceError` when the peer failed the association or the
    transport broke; :class:`trio.EndOfChannel` from :meth:`receive` once the peer
    sent close_notify and buffered data is drained.
    """

    def __init__(
        self,
        transport: DatagramTransport,
        role: Literal["client", "server"],
        certificate: DtlsCertificate,
        remote_fingerprints: list[tuple[str, str]] | None = None,
        *,
        mtu: int = 1200,
        inbox_size: int = 64,
        receive_buffer_size: int = 256,
        handshake_timeout: float = 30.0,
    ) -> None:
        self._transport = transport
        self.endpoint = DtlsEndpoint(
            role, certificate, remote_fingerprints, mtu, handshake_timeout=handshake_timeout
        )
        self._inbox_send, self._inbox_receive = trio.open_memory_channel[
            bytes | _Outgoing | _TransportGone | _CloseRequest
        ](inbox_size)
        self._received_send, self._received_receive = trio.open_memory_channel[bytes](
            receive_buffer_size
        )
        self._handshake: HandshakeComplete | None = None
        self._handshake_done = trio.Event()
        self._core_done = trio.Event()
        self._failure: BaseException | None = None
        self._peer_closed = False
        self._locally_closed = False
        self._received_dropped = 0
        self._nursery: trio.Nursery | None = None
        self._exit_stack = contextlib.AsyncExitStack()

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> DtlsTransport:
        nursery = await self._exit_stack.enter_async_context(trio.open_nursery())
        self._nursery = nursery
        nursery.start_soon(self._read_network, name="dtls network reader")
        nursery.start_soon(self._own_core, name="dtls core owner")
        try:
            await self._handshake_done.wait()
        except BaseException:
            nursery.cancel_scope.cancel()
            self._locally_closed = True
            await self._exit_stack.aclose()
            raise
        if self._handshake is None:
            # Children never raise, so the nursery exits cleanly and the caller sees
            # one BrokenResourceError rather than an ExceptionGroup.
            nursery.cancel_scope.cancel()
            await self._exit_stack.aclose()
            raise trio.BrokenResourceError("DTLS handshake failed") from self._failure
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None:
        try:
            await self.aclose()
        finally:
            try:
                result = await self._exit_stack.__aexit__(exc_type, exc, traceback)
            except BaseExceptionGroup as group:
                # Our tasks never raise, so a group holding only the body's exception
                # is the nursery's wrapping: give the caller their exception back.
                if exc is not None and list(group.exceptions) == [exc]:
                    raise exc from exc.__cause__  # noqa: B904
                raise
        return result

    async def aclose(self) -> None:
        """Send close_notify (bounded, even if cancelled) and stop both tasks."""
        if self._locally_closed:
            await trio.lowlevel.checkpoint()
            return
        self._locally_closed = True
        self._received_receive.close()
        with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_GRACE):
            if not self._core_done.is_set():
                with contextlib.suppress(trio.ClosedResourceError, trio.BrokenResourceError):
                    await self._inbox_send.send(_CLOSE)
                await self._core_done.wait()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    # ------------------------------------------------------------ data path

    async def send(self, data: bytes) -> None:
        """Queue ``data`` as one DTLS record (at most :attr:`max_message_size` bytes)."""
        self._check_usable()
        if len(data) > self.max_message_size:
            raise ValueError(f"{len(data)} bytes exceed one DTLS record ({self.max_message_size})")
        try:
            await self._inbox_send.send(_Outgoing(bytes(data)))
        except trio.BrokenResourceError:  # the core task has ended: say why
            self._check_usable()
            raise

    async def receive(self) -> bytes:
        """Next application message from the peer."""
        if self._locally_closed:
            raise trio.ClosedResourceError("DTLS transport was closed")
        try:
            return await self._received_receive.receive()
        except trio.EndOfChannel:
            if self._failure is not None:
                raise trio.BrokenResourceError("DTLS association failed") from self._failure
            raise

    # ------------------------------------------------------------ information

    @property
    def max_message_size(self) -> int:
        """Largest message :meth:`send` accepts (one record within the MTU)."""
        return self.endpoint.max_application_data()

    @property
    def srtp_profile(self) -> str | None:
        """The negotiated DTLS-SRTP profile."""
        return self.endpoint.srtp_profile

    @property
    def remote_fingerprint(self) -> str | None:
        """The peer certificate's fingerprint, ``"sha-256 AB:..."``."""
        return self.endpoint.remote_fingerprint

    def statistics(self) -> DtlsTransportStatistics:
        """Snapshot of the counters."""
        return DtlsTransportStatistics(
            dtls=self.endpoint.statistics(),
            received_buffered=self._received_receive.statistics().current_buffer_used,
            received_dropped=self._received_dropped,
        )

    # ------------------------------------------------------------ tasks

    def _check_usable(self) -> None:
        if self._locally_closed:
            raise trio.ClosedResourceError("DTLS transport was closed")
        if self._failure is not None:
            raise trio.BrokenResourceError("DTLS association failed") from self._failure
        if self._peer_closed:
            raise trio.BrokenResourceError("peer closed the DTLS association")

    async def _read_network(self) -> None:
        try:
            while True:
                datagram = await self._transport.receive()
                await self._inbox_send.send(datagram)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel) as exc:
            # Our own inbox closing means the core is gone: nothing to report.
            if not self._core_done.is_set():
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await self._inbox_send.send(_TransportGone(exc))
        except OSError as exc:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await self._inbox_send.send(_TransportGone(exc))

    async def _own_core(self) -> None:
        endpoint = self.endpoint
        try:
            endpoint.start(trio.current_time())
            while True:
                self._dispatch_events()
                await self._flush_transmits()
                if endpoint.state in (DtlsState.CLOSED, DtlsState.FAILED):
                    return
                deadline = endpoint.poll_timeout()
                with trio.move_on_at(math.inf if deadline is None else deadline):
                    item = await self._inbox_receive.receive()
                    if not self._apply(item):
                        return
                endpoint.handle_timeout(trio.current_time())
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._failure = self._failure or exc
        except trio.Cancelled:
            # Cancelled with the owner's scope: still tell the peer (close_notify),
            # briefly, so it does not wait for a timeout to notice.
            with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_GRACE):
                endpoint.close()
                with contextlib.suppress(
                    trio.BrokenResourceError, trio.ClosedResourceError, OSError
                ):
                    await self._flush_transmits()
            raise
        finally:
            self._received_send.close()
            self._inbox_receive.close()
            self._core_done.set()
            self._handshake_done.set()

    def _apply(self, item: bytes | _Outgoing | _TransportGone | _CloseRequest) -> bool:
        """Feed one inbox item to the endpoint; False means stop the core."""
        endpoint = self.endpoint
        if isinstance(item, bytes):
            with contextlib.suppress(DtlsParseError):  # counted by the endpoint
                endpoint.receive(item, trio.current_time())
        elif isinstance(item, _Outgoing):
            if endpoint.state is DtlsState.CONNECTED:
                endpoint.send(item.data)
        elif isinstance(item, _TransportGone):
            self._failure = self._failure or item.error
            endpoint.close()
            return False
        else:
            endpoint.close()
        return True

    def _dispatch_events(self) -> None:
        while (event := self.endpoint.poll_event()) is not None:
            if isinstance(event, DataReceived):
                try:
                    self._received_send.send_nowait(event.data)
                except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                    self._received_dropped += 1
            elif isinstance(event, HandshakeComplete):
                self._handshake = event
                self._handshake_done.set()
            elif isinstance(event, Closed):
                self._peer_closed = True
            elif isinstance(event, Failed):
                self._failure = DtlsError(event.error)

    async def _flush_transmits(self) -> None:
        while (datagram := self.endpoint.poll_transmit()) is not None:
            await self._transport.send(datagram)
