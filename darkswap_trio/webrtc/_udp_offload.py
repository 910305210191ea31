"""Batched UDP for the data path: Linux segmentation offload (GSO) and coalescing (GRO).

A data channel transfer is tens of thousands of ~1200-byte datagrams a second, and one
``sendto`` costs more than encrypting the datagram. Linux can take a run of equal-sized
datagrams in one ``sendmsg`` (``UDP_SEGMENT``, kernel 4.18+) and cut them itself, and can
hand a receiver whose socket enables ``UDP_GRO`` (5.0+) a run of datagrams of one flow in
one ``recvmsg``, with the segment size in a control message. The datagrams on the wire
are exactly the ones we would have sent one by one; QUIC stacks use the same two options.

:class:`UdpBatchSocket` wraps a non-blocking UDP socket with both, and falls back to one
syscall per datagram where the platform, the kernel or the route refuses them.
"""

from __future__ import annotations

import errno
import functools
import socket
import struct
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio

__all__ = ["UdpBatchSocket", "gso_runs", "split_coalesced"]

UDP_SEGMENT = 103  # linux/udp.h; the socket module does not export these
UDP_GRO = 104
_MAX_SEGMENTS = 64  # UDP_MAX_SEGMENTS in older kernels (newer ones allow 128)
_MAX_PAYLOAD = 65000  # one IPv4/IPv6 UDP payload, with room to spare
_RECV_SIZE = 65536
_CMSG_SPACE = socket.CMSG_SPACE(4) if hasattr(socket, "CMSG_SPACE") else 0
# Errors that say "this kernel, device or route cannot segment": stop trying.
# (EMSGSIZE: a segment over the route's MTU, which sendto would fragment instead.)
_GSO_UNSUPPORTED = {errno.EIO, errno.EINVAL, errno.EMSGSIZE, errno.ENOPROTOOPT, errno.EOPNOTSUPP}


def gso_runs(datagrams: list[bytes], start: int = 0) -> int:
    """End (exclusive) of the longest run from ``start`` that one GSO send can carry:
    equal sizes, except that the last may be shorter, within the kernel's limits."""
    size = len(datagrams[start])
    limit = min(len(datagrams), start + _MAX_SEGMENTS, start + _MAX_PAYLOAD // max(size, 1))
    end = start + 1
    while end < limit and len(datagrams[end]) == size:
        end += 1
    if end < limit and len(datagrams[end]) < size:
        end += 1
    return end


def split_coalesced(data: bytes, ancdata: list[tuple[int, int, bytes]]) -> list[bytes] | None:
    """The datagrams of a GRO read (its UDP_GRO control message gives their size), or
    None if ``data`` is a single datagram."""
    for level, kind, value in ancdata:
        if level == socket.IPPROTO_UDP and kind == UDP_GRO and len(value) >= 4:
            size = int.from_bytes(value[:4], sys.byteorder)  # the kernel's int
            if 0 < size < len(data):
                return [data[i : i + size] for i in range(0, len(data), size)]
    return None


class UdpBatchSocket:
    """Batch sends and receives on ``sock`` (non-blocking UDP); ``offload=False`` keeps
    to one syscall per datagram. ``send_errors`` counts datagrams the kernel refused."""

    def __init__(self, sock: socket.socket, *, offload: bool = True) -> None:
        self.sock = sock
        # trio's own wait, not a coroutine around it: one frame less per wait and wake-up.
        self.wait_readable: Callable[[], Awaitable[None]] = functools.partial(
            trio.lowlevel.wait_readable, sock
        )
        linux = sys.platform == "linux" and _CMSG_SPACE > 0
        self.gso = offload and linux
        self.gro = False
        if offload and linux:
            try:
                sock.setsockopt(socket.IPPROTO_UDP, UDP_GRO, 1)
                self.gro = True
            except OSError:
                pass  # kernel before 5.0: plain reads
        self.send_errors = 0
        self.segmented_sends = 0  # sendmsg calls that carried several datagrams

    def getsockname(self) -> tuple[str, int]:
        address: tuple[str, int] = self.sock.getsockname()[:2]
        return address

    async def wait_writable(self) -> None:
        await trio.lowlevel.wait_writable(self.sock)

    def interrupt_readers(self) -> None:
        """End every wait on the socket at once with ClosedResourceError (the socket
        stays open; a writer woken this way waits again)."""
        trio.lowlevel.notify_closing(self.sock)

    def receive_into(self, batch: list[tuple[bytes, tuple[str, int]]], limit: int) -> None:
        """Append (datagram, address) pairs the kernel holds until it has none or
        ``batch`` reaches ``limit``. Raises OSError (other than blocking) from the socket."""
        sock = self.sock
        try:
            if not self.gro:
                recvfrom = sock.recvfrom
                while len(batch) < limit:
                    batch.append(recvfrom(_RECV_SIZE))
                return
            recvmsg = sock.recvmsg
            while len(batch) < limit:
                data, ancdata, _flags, addr = recvmsg(_RECV_SIZE, _CMSG_SPACE)
                parts = split_coalesced(data, ancdata) if ancdata else None
                if parts is None:
                    batch.append((data, addr))
                else:
                    batch.extend([(part, addr) for part in parts])
        except BlockingIOError:
            pass

    def send(self, datagrams: list[bytes], addr: Any) -> int:
        """Send ``datagrams`` to ``addr`` in order. Returns how many the kernel took
        before it would block (all of them, usually); refused ones count as taken and
        in ``send_errors``, as with one ``sendto`` each."""
        sock = self.sock
        count = len(datagrams)
        index = 0
        while index < count:
            segmented_failed = False
            if self.gso and count - index > 1:
                end = gso_runs(datagrams, index)
                if end - index > 1:
                    size = len(datagrams[index])
                    try:
                        sock.sendmsg(
                            [b"".join(datagrams[index:end])],
                            [(socket.IPPROTO_UDP, UDP_SEGMENT, struct.pack("=H", size))],
                            0,
                            addr,
                        )
                    except BlockingIOError:
                        return index
                    except OSError as exc:
                        # This run goes out one by one below, which tells a kernel or
                        # route that cannot segment from an address that is refused.
                        segmented_failed = exc.errno in _GSO_UNSUPPORTED
                    else:
                        self.segmented_sends += 1
                        index = end
                        continue
            try:
                sock.sendto(datagrams[index], addr)
            except BlockingIOError:
                return index
            except OSError:
                self.send_errors += 1  # unreachable, refused, a hostile address
            else:
                if segmented_failed:
                    self.gso = False  # plain sends work where segmented ones fail
            index += 1
        return count
