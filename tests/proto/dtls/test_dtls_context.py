"""A DTLS context made ahead of the endpoint (``dtls_context``), as the peer connection
makes it when it is created rather than when the remote description comes."""

from __future__ import annotations

import datetime

from darkswap_trio.proto.dtls import DtlsCertificate, DtlsEndpoint, DtlsState, dtls_context
from darkswap_trio.proto.dtls._endpoint import HandshakeComplete

WALL_CLOCK = datetime.datetime(2026, 12, 3, 12, 0, tzinfo=datetime.UTC)
CLIENT_CERT = DtlsCertificate.generate(WALL_CLOCK)
SERVER_CERT = DtlsCertificate.generate(WALL_CLOCK)


def expect(cert: DtlsCertificate) -> list[tuple[str, str]]:
    return [("sha-256", cert.fingerprint())]


def run_handshake(client: DtlsEndpoint, server: DtlsEndpoint) -> list[object]:
    """Lossless, instant exchange at now=0 until neither side has anything to send."""
    client.start(0.0)
    server.start(0.0)
    events: list[object] = []
    for _ in range(20):
        moved = False
        for sender, receiver in ((client, server), (server, client)):
            while (datagram := sender.poll_transmit()) is not None:
                receiver.receive(datagram, 0.0)
                moved = True
        if not moved:
            break
    for endpoint in (client, server):
        while (event := endpoint.poll_event()) is not None:
            events.append(event)
    return events


def test_endpoints_with_contexts_made_ahead_complete_the_handshake_in_both_roles():
    client = DtlsEndpoint(
        "client", CLIENT_CERT, expect(SERVER_CERT), context=dtls_context(CLIENT_CERT)
    )
    server = DtlsEndpoint(
        "server", SERVER_CERT, expect(CLIENT_CERT), context=dtls_context(SERVER_CERT)
    )
    events = run_handshake(client, server)
    done = [e for e in events if isinstance(e, HandshakeComplete)]
    assert client.state is server.state is DtlsState.CONNECTED
    assert sorted(e.remote_fingerprint for e in done) == sorted(
        (CLIENT_CERT.sdp_fingerprint, SERVER_CERT.sdp_fingerprint)
    )


def test_a_context_made_ahead_and_one_made_by_the_endpoint_interoperate():
    client = DtlsEndpoint("client", CLIENT_CERT, expect(SERVER_CERT))
    server = DtlsEndpoint(
        "server", SERVER_CERT, expect(CLIENT_CERT), context=dtls_context(SERVER_CERT)
    )
    run_handshake(client, server)
    assert client.state is server.state is DtlsState.CONNECTED
    client.send(b"hello")
    while (datagram := client.poll_transmit()) is not None:
        server.receive(datagram, 0.0)
    received = [e for e in iter(server.poll_event, None) if hasattr(e, "data")]
    assert [e.data for e in received] == [b"hello"]
