"""TURN servers reached over TCP (``turn:...?transport=tcp``) or TLS (``turns:``): one
connection each.

The peer core addresses what is for a TURN server to the server's address, whatever
the transport; :class:`TurnStreamSocket` stands in for the peer connection's UDP
socket and sends what is addressed to a TCP server down its connection instead
(through a bounded queue and a writer task, so the core's synchronous send never
waits). A reader task per connection splits the stream into STUN messages and
ChannelData (RFC 8656 section 12.5) and hands them to the core as datagrams from the
server. A connection that breaks ends its allocation: nothing reconnects it.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable

import trio

from ..proto.errors import TurnParseError
from ..proto.turn import StreamDeframer
from ._driver import DatagramSocket

__all__ = ["TurnStreamSocket"]

logger = logging.getLogger(__name__)
Address = tuple[str, int]
_QUEUE = 256  # messages waiting for the writer (SCTP retransmits what a full queue drops)
CONNECT_TIMEOUT = 5.0


class TurnStreamSocket:
    """A :class:`~._driver.DatagramSocket`: ``sock`` plus TCP connections to TURN servers."""

    def __init__(self, sock: DatagramSocket) -> None:
        self._sock = sock
        # The UDP socket's own, not a coroutine around it: one frame less on every wait
        # and wake-up of the data path.
        self.wait_readable: Callable[[], Awaitable[None]] = sock.wait_readable
        self._streams: dict[Address, trio.MemorySendChannel[bytes]] = {}
        self._pending: list[tuple[Address, trio.abc.Stream, trio.MemoryReceiveChannel[bytes]]] = []
        self.dropped = 0
        self.send_errors = 0  # the UDP socket's, as the driver counts them

    @property
    def datagram_socket(self) -> DatagramSocket:
        """The UDP socket under the TURN streams (host, srflx and TURN-over-UDP traffic)."""
        return self._sock

    def getsockname(self) -> Address:
        return self._sock.getsockname()

    async def wait_writable(self) -> None:
        await self._sock.wait_writable()

    @property
    def interrupt_readers(self) -> Callable[[], None] | None:
        """The UDP socket's (see ``PeerDriver.wait_message``), if it has one."""
        interrupt: Callable[[], None] | None = getattr(self._sock, "interrupt_readers", None)
        return interrupt

    def receive_into(self, batch: list[tuple[bytes, Address]], limit: int) -> None:
        self._sock.receive_into(batch, limit)

    def send(self, datagrams: list[bytes], addr: Address) -> int:
        stream = self._streams.get(addr)
        if stream is None:
            sock = self._sock
            errors = sock.send_errors
            taken = sock.send(datagrams, addr)
            self.send_errors += sock.send_errors - errors
            return taken
        for datagram in datagrams:
            try:
                stream.send_nowait(datagram)
            except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
                self.dropped += 1
        return len(datagrams)

    async def connect(
        self, server: Address, tls: ssl.SSLContext | None = None, hostname: str = ""
    ) -> bool:
        """Open the TCP connection to ``server``, with TLS (certificate checked for
        ``hostname``) if ``tls`` is given; False, logged, if it cannot be."""
        if server in self._streams:
            return True
        stream: trio.abc.Stream
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                stream = await trio.open_tcp_stream(*server)
                if tls is not None:
                    stream = trio.SSLStream(stream, tls, server_hostname=hostname)
                    await stream.do_handshake()
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            logger.warning("TURN server %s:%d over TCP/TLS unreachable: %r", *server, exc)
            return False
        send, receive = trio.open_memory_channel[bytes](_QUEUE)
        self._streams[server] = send
        self._pending.append((server, stream, receive))
        return True

    def start(
        self,
        nursery: trio.Nursery,
        deliver: Callable[[list[tuple[bytes, Address]]], None],
    ) -> None:
        """Start the reader and writer of every connection in ``nursery``."""
        for server, stream, receive in self._pending:
            nursery.start_soon(self._write, stream, receive, name=f"TURN TCP writer {server}")
            nursery.start_soon(
                self._read, server, stream, deliver, name=f"TURN TCP reader {server}"
            )
        self._pending.clear()

    async def aclose(self) -> None:
        for _, stream, _ in self._pending:  # never started: an error before the tasks
            await stream.aclose()
        for send in self._streams.values():
            send.close()

    async def _write(
        self, stream: trio.abc.Stream, receive: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        async with stream, receive:
            try:
                async for data in receive:
                    await stream.send_all(drain_joined(data, receive))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return

    async def _read(
        self,
        server: Address,
        stream: trio.abc.Stream,
        deliver: Callable[[list[tuple[bytes, Address]]], None],
    ) -> None:
        deframer = StreamDeframer()
        while True:
            try:
                data = await stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                logger.info("TURN server %s:%d closed the TCP connection", *server)
                self._streams.pop(server, None)
                return
            try:
                messages = deframer.feed(bytes(data))
            except TurnParseError as exc:
                logger.warning("TURN server %s:%d sent bad framing: %s", *server, exc)
                self._streams.pop(server, None)
                await stream.aclose()
                return
            if messages:
                deliver([(message, server) for message in messages])


def drain_joined(first: bytes, receive: trio.MemoryReceiveChannel[bytes]) -> bytes:
    """``first`` and every frame already queued behind it, as one write.

    One ``send_all`` per frame costs the writer two checkpoints per frame, while the
    core queues a whole flight of datagrams without one: the queue filled and dropped
    (SCTP then retransmitted). One write per wake keeps the writer at the core's pace."""
    parts = [first]
    while True:
        try:
            parts.append(receive.receive_nowait())
        except (trio.WouldBlock, trio.EndOfChannel):
            return b"".join(parts) if len(parts) > 1 else first
