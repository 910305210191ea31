"""The driver's send path: an application call flushes the core from the caller's task,
and a full socket hands the rest to the core task, which waits until it is writable."""

from __future__ import annotations

import trio
import trio.testing
from test_peer_connection_virtualnet import connect, pcs  # pytest puts this dir on sys.path

from darkswap_trio.testing import VirtualNet


class FillableSocket:
    """A VirtualSocket whose send buffer the test can fill: while full, ``send`` takes
    nothing and ``wait_writable`` waits for :meth:`drain`."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.full = False
        self.refused_sends = 0
        self._drained = trio.Event()

    @property
    def send_errors(self) -> int:
        return self.inner.send_errors

    def getsockname(self):
        return self.inner.getsockname()

    async def wait_readable(self) -> None:
        await self.inner.wait_readable()

    async def wait_writable(self) -> None:
        while self.full:
            await self._drained.wait()
        await trio.lowlevel.checkpoint()

    def receive_into(self, batch, limit) -> None:
        self.inner.receive_into(batch, limit)

    def send(self, datagrams, addr) -> int:
        if self.full:
            self.refused_sends += 1
            return 0
        return self.inner.send(datagrams, addr)

    def drain(self) -> None:
        self.full = False
        self._drained.set()
        self._drained = trio.Event()

    def close(self) -> None:
        self.inner.close()


async def test_a_message_leaves_from_the_senders_task(autojump_clock):
    net = VirtualNet(0, delay=0.0005)
    async with pcs(await net.bind(("10.0.0.1", 0)), await net.bind(("10.0.0.2", 0))) as (a, b):
        await connect(a, b)
        channel = await a.create_data_channel("now")
        accepted = await b.accept_data_channel()
        before = a._driver.datagrams_sent
        a._driver.app.send_message(channel.id, b"x")  # synchronous: no other task runs
        assert a._driver.datagrams_sent == before + 1
        with trio.fail_after(1):
            assert await accepted.receive() == b"x"


async def test_a_full_socket_leaves_the_flush_to_the_core_task(autojump_clock):
    net = VirtualNet(0, delay=0.0005)
    sock_a = FillableSocket(await net.bind(("10.0.0.1", 0)))
    async with pcs(sock_a, await net.bind(("10.0.0.2", 0))) as (a, b):
        await connect(a, b)
        channel = await a.create_data_channel("held")
        accepted = await b.accept_data_channel()
        sock_a.full = True
        await channel.send(b"held back")
        assert sock_a.refused_sends == 1
        await trio.testing.wait_all_tasks_blocked()
        sock_a.drain()  # the core task, waiting until writable, sends it now
        with trio.fail_after(0.001):  # one link delay; no SCTP timer fires this soon
            assert await accepted.receive() == b"held back"
        await channel.send(b"and then")
        with trio.fail_after(0.01):
            assert await accepted.receive() == b"and then"
