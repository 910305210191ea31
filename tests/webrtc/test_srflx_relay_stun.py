"""Server-reflexive gathering against the relay's own STUN service.

Two settings:

* real loopback UDP, the whole relay (``running_relay(stun=True)``): the mapped
  address the service reports equals the host address, so the srflx candidate is
  redundant and eliminated (RFC 8445 section 5.1.3); what is checked is that the
  agent asked, the service answered and counted it, and gathering completed on
  that answer;
* the same ``serve_stun`` loop on a VirtualNet socket at a public address, the
  IceTransport behind a VirtualNat: the srflx candidate appears, with the NAT's
  mapping as its address and the host candidate as its related address. The
  service's socket is the one thing swapped (``relay._stun._open_socket``), as the
  IceTransport's is through ``socket_factory``.
"""

from __future__ import annotations

import pytest
import trio

import relay._stun
from darkswap_trio.testing import VirtualNet, running_relay
from darkswap_trio.webrtc import IceTransport
from relay._metrics import RelayMetrics
from relay._stun import serve_stun

STUN_REQUESTS = "darkswap_relay_stun_requests_total"
PUBLIC_STUN = ("198.51.100.7", 3478)
PRIVATE_HOST = "192.168.1.10"


async def test_loopback_gathering_is_answered_and_counted_by_the_relay():
    with trio.fail_after(10):  # a lost request would need ~40 s of retransmissions
        async with running_relay(stun=True) as server:
            assert server.stun_port
            async with IceTransport(
                True,
                host_addresses=["127.0.0.1"],
                stun_servers=[("127.0.0.1", server.stun_port)],
            ) as ice:
                candidates = [c async for c in ice.local_candidates()]  # ends at completion
                stats = ice.statistics().ice
                (local,) = ice.local_addresses
            assert server.metrics.value(STUN_REQUESTS) == 1
    # Loopback has no NAT: the reflexive address is the host one, hence redundant.
    assert [(c.type, c.host, c.port) for c in candidates] == [("host", *local)]
    assert stats.responses_received == 1
    assert stats.local_candidates == 1


class _ServiceSocket:
    """A VirtualNet socket with the context-manager protocol of a trio socket."""

    def __init__(self, sock) -> None:
        self._sock = sock

    def __enter__(self) -> _ServiceSocket:
        return self

    def __exit__(self, *exc_info) -> None:
        self._sock.close()

    def __getattr__(self, name):
        return getattr(self._sock, name)


@pytest.mark.parametrize(("loss", "seed"), [(0.0, 0), (0.5, 3)], ids=["clean", "lossy"])
async def test_srflx_behind_a_nat_from_the_relays_stun_loop(
    autojump_clock, monkeypatch, loss, seed
):
    net = VirtualNet(seed, loss=loss)

    async def open_virtual_socket(host: str, port: int) -> _ServiceSocket:
        return _ServiceSocket(await net.bind((host, port)))

    monkeypatch.setattr(relay._stun, "_open_socket", open_virtual_socket)
    nat = net.add_nat("203.0.113.20")
    metrics = RelayMetrics()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_stun, PUBLIC_STUN[0], PUBLIC_STUN[1], metrics)
            assert port == PUBLIC_STUN[1]
            async with IceTransport(
                True,
                host_addresses=[PRIVATE_HOST],
                socket_factory=nat.bind,
                stun_servers=[PUBLIC_STUN],
            ) as ice:
                candidates = [c async for c in ice.local_candidates()]
                stats = ice.statistics().ice
                (local,) = ice.local_addresses
            nursery.cancel_scope.cancel()
    host, srflx = candidates
    assert (host.type, host.host, host.port) == ("host", *local)
    assert srflx.type == "srflx"
    assert (srflx.host, srflx.port) == nat.mapping(local)
    assert srflx.host == nat.public_ip
    assert (srflx.related_address, srflx.related_port) == local
    assert srflx.priority < host.priority  # type preference 100 < 126
    assert metrics.value(STUN_REQUESTS) >= 1
    if loss:
        assert net.statistics().lost >= 1 and stats.retransmissions >= 1
    else:
        assert metrics.value(STUN_REQUESTS) == 1 and stats.retransmissions == 0
