"""LazyChannel: a bounded memory channel that exists only once something uses it.

A relay session offers three queues (signals, incoming circuits, errors) that most
sessions never see an item on; making a trio memory channel costs ~10 us, and a
client registering thousands of peers (or reconnecting after a relay restart) would
pay it three times per registration.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class LazyChannel(Generic[T]):
    """``trio.open_memory_channel[T](size)``, opened on first use; same errors."""

    __slots__ = ("_size", "_send", "_receive", "_closed")

    def __init__(self, size: int) -> None:
        self._size = size
        self._send: trio.MemorySendChannel[T] | None = None
        self._receive: trio.MemoryReceiveChannel[T] | None = None
        self._closed = False

    def _open(self) -> tuple[trio.MemorySendChannel[T], trio.MemoryReceiveChannel[T]]:
        send, receive = trio.open_memory_channel[T](self._size)
        self._send, self._receive = send, receive
        if self._closed:  # closed before anyone looked: a receiver sees EndOfChannel
            send.close()
        return send, receive

    @property
    def receiver(self) -> trio.MemoryReceiveChannel[T]:
        return self._receive if self._receive is not None else self._open()[1]

    def send_nowait(self, item: T) -> None:
        """As MemorySendChannel.send_nowait: WouldBlock when full, ClosedResourceError
        after :meth:`close`."""
        send = self._send if self._send is not None else self._open()[0]
        send.send_nowait(item)

    def close(self) -> None:
        self._closed = True
        if self._send is not None:
            self._send.close()
