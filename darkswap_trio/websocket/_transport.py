"""Closing a connection's transport, and accepting connections, at the cost of the syscalls.

``trio.aclose_forcefully`` closes a stream inside a cancelled scope: for a plain TCP
stream that is one ``close(2)`` followed by a checkpoint that raises and catches
``Cancelled`` (a traceback, reference cycles for the collector). In a relay restart
storm every refused connection and every broken session pays it (on the relay and in
the SDK), and ``trio.serve_listeners`` pays it a second time for each connection its
handler has closed already: 10-15% of either side's CPU. ``trio.SocketListener.accept``
drops the peer address that ``accept(2)`` returned, so the server asked the kernel again
(``getpeername``).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Awaitable, Callable

import trio

logger = logging.getLogger("darkswap_trio.websocket")

# As trio.SocketListener.accept: errors that concern one connection, not the listener.
_IGNORABLE_ACCEPT = frozenset(
    getattr(errno, name)
    for name in ("ECONNABORTED", "EPERM", "EPROTO", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN",
                 "ENONET", "EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH", "ECONNRESET",
                 "ETIMEDOUT", "EPROTONOSUPPORT", "ESOCKTNOSUPPORT")
    if hasattr(errno, name)
)  # fmt: skip
# As trio.serve_listeners: the system is out of something; wait and accept again.
_CAPACITY_ACCEPT = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
CAPACITY_SLEEP = 0.1


def close_now(stream: trio.abc.Stream) -> bool:
    """Close a plain TCP stream at once (trio wakes any task waiting on its socket).

    False for any other stream (TLS): the caller closes it with ``aclose_forcefully``.
    """
    if type(stream) is not trio.SocketStream:
        return False
    stream.socket.close()
    return True


async def close_transport(stream: trio.abc.Stream) -> None:
    """``trio.aclose_forcefully(stream)``, without the cancelled checkpoint for plain TCP.

    Still a schedule point (not a cancel point): it runs when a task gives up its
    connection, often in a loop over many of them.
    """
    if close_now(stream):
        await trio.lowlevel.cancel_shielded_checkpoint()
    else:
        await trio.aclose_forcefully(stream)


async def accept_loop(
    listener: trio.SocketListener,
    handler_nursery: trio.Nursery,
    serve: Callable[[trio.SocketStream, tuple[str, int]], Awaitable[object]],
) -> None:
    """Accept on ``listener`` forever; ``serve(stream, remote_address)`` in a new task
    for each connection (it closes the stream itself). Closes the listener on exit."""
    sock = listener.socket
    try:
        while True:
            try:
                conn, address = await sock.accept()
            except OSError as exc:
                if exc.errno in _IGNORABLE_ACCEPT:
                    continue
                if exc.errno in _CAPACITY_ACCEPT:
                    logger.error(
                        "accept returned %s (%s); retrying in %s seconds",
                        errno.errorcode[exc.errno], os.strerror(exc.errno), CAPACITY_SLEEP,
                    )  # fmt: skip
                    await trio.sleep(CAPACITY_SLEEP)
                    continue
                raise
            handler_nursery.start_soon(
                serve, trio.SocketStream(conn), (str(address[0]), int(address[1]))
            )
    finally:
        sock.close()
