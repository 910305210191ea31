"""DtlsEndpoint pairs stepped in simulated time over a seeded virtual link."""

from __future__ import annotations

import datetime
import heapq
import random
import struct

import pylibsrtp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from darkswap_trio.proto.dtls._certificate import DtlsCertificate
from darkswap_trio.proto.dtls._endpoint import (
    Closed,
    DataReceived,
    DtlsEndpoint,
    DtlsState,
    DtlsStateError,
    Failed,
    HandshakeComplete,
)
from darkswap_trio.proto.dtls._records import (
    ContentType,
    DtlsRecord,
    is_dtls,
    pack_records,
    parse_records_untrusted,
)
from darkswap_trio.proto.errors import DtlsParseError, ParseError
from darkswap_trio.webrtc._srtp import create_srtp_sessions, export_srtp_keys

WALL_CLOCK = datetime.datetime(2026, 11, 23, 12, 0, tzinfo=datetime.UTC)
CLIENT_CERT = DtlsCertificate.generate(WALL_CLOCK)
SERVER_CERT = DtlsCertificate.generate(WALL_CLOCK)
OTHER_CERT = DtlsCertificate.generate(WALL_CLOCK)


def fingerprints(cert: DtlsCertificate) -> list[tuple[str, str]]:
    return [("sha-256", cert.fingerprint())]


def make_pair(mtu: int = 1200, client_expects=None, server_expects=None):
    client = DtlsEndpoint(
        "client", CLIENT_CERT, client_expects or fingerprints(SERVER_CERT), mtu=mtu
    )
    server = DtlsEndpoint(
        "server", SERVER_CERT, server_expects or fingerprints(CLIENT_CERT), mtu=mtu
    )
    return client, server


class VirtualLink:
    """Seeded datagram network: fixed delay, loss, duplication and reordering jitter."""

    def __init__(self, seed=0, loss=0.0, duplicate=0.0, reorder=0.0, delay=0.01, mtu=1200):
        self.rng = random.Random(seed)
        self.loss, self.duplicate, self.reorder, self.delay = loss, duplicate, reorder, delay
        self.mtu = mtu
        self.queue: list[tuple[float, int, DtlsEndpoint, bytes]] = []
        self.counter = 0
        self.sent: list[bytes] = []

    def send(self, destination: DtlsEndpoint, datagram: bytes, now: float) -> None:
        self.sent.append(datagram)
        if self.rng.random() < self.loss:
            return
        copies = 2 if self.rng.random() < self.duplicate else 1
        for _ in range(copies):
            jitter = self.rng.uniform(0, 0.2) if self.rng.random() < self.reorder else 0.0
            self.counter += 1
            heapq.heappush(
                self.queue, (now + self.delay + jitter, self.counter, destination, datagram)
            )

    def next_arrival(self) -> float | None:
        return self.queue[0][0] if self.queue else None

    def deliver_due(self, now: float) -> None:
        while self.queue and self.queue[0][0] <= now:
            _, _, destination, datagram = heapq.heappop(self.queue)
            destination.receive(datagram, now)


def step_until(client, server, link, done, start=0.0, max_steps=5000):
    """Run the pair in simulated time until ``done()``; a step bound catches livelock."""
    now = start
    events = {client: [], server: []}
    for _ in range(max_steps):
        for endpoint, peer in ((client, server), (server, client)):
            while (datagram := endpoint.poll_transmit()) is not None:
                link.send(peer, datagram, now)
            while (event := endpoint.poll_event()) is not None:
                events[endpoint].append(event)
        if done(events):
            return now, events[client], events[server]
        deadlines = [
            t
            for t in (client.poll_timeout(), server.poll_timeout(), link.next_arrival())
            if t is not None
        ]
        if not deadlines:
            raise AssertionError(f"stalled at t={now}: {events}")
        now = max(now, min(deadlines))
        link.deliver_due(now)
        client.handle_timeout(now)
        server.handle_timeout(now)
    raise AssertionError(f"no progress after {max_steps} steps (livelock?) at t={now}")


def both_have(event_type):
    return lambda events: all(
        any(isinstance(e, event_type) for e in evs) for evs in events.values()
    )


def handshake(client, server, link=None):
    link = link or VirtualLink()
    client.start(0.0)
    server.start(0.0)
    return step_until(client, server, link, both_have(HandshakeComplete))


def test_handshake_completes_for_both_roles():
    client, server = make_pair()
    _, client_events, server_events = handshake(client, server)
    assert client.state is server.state is DtlsState.CONNECTED
    (client_done,) = client_events
    (server_done,) = server_events
    assert client_done.remote_fingerprint == SERVER_CERT.sdp_fingerprint
    assert server_done.remote_fingerprint == CLIENT_CERT.sdp_fingerprint
    assert client_done.srtp_profile == server_done.srtp_profile == "SRTP_AES128_CM_SHA1_80"
    assert client.poll_timeout() is None and server.poll_timeout() is None


def test_certificate_is_self_signed_p256_with_short_validity():
    cert = DtlsCertificate.generate(WALL_CLOCK)
    assert cert.certificate.issuer == cert.certificate.subject
    assert cert.private_key.curve.name == "secp256r1"
    validity = cert.certificate.not_valid_after_utc - cert.certificate.not_valid_before_utc
    assert datetime.timedelta(days=1) < validity <= datetime.timedelta(days=60)
    assert cert.certificate.not_valid_before_utc < WALL_CLOCK < cert.certificate.not_valid_after_utc
    assert cert.certificate.serial_number != CLIENT_CERT.certificate.serial_number
    algorithm, value = cert.sdp_fingerprint.split(" ")
    assert algorithm == "sha-256"
    assert len(value.split(":")) == 32 and value == value.upper()
    with pytest.raises(ValueError):
        DtlsCertificate.generate(WALL_CLOCK.replace(tzinfo=None))


def test_unknown_remote_fingerprint_is_reported_then_settable():
    client = DtlsEndpoint("client", CLIENT_CERT, None)
    server = DtlsEndpoint("server", SERVER_CERT, None)
    server.set_remote_fingerprints([("SHA-256", CLIENT_CERT.fingerprint().lower())])
    _, client_events, server_events = handshake(client, server)
    assert client_events[0].remote_fingerprint == SERVER_CERT.sdp_fingerprint
    assert isinstance(server_events[0], HandshakeComplete)


def test_client_rejects_wrong_server_fingerprint_and_server_sees_close():
    client, server = make_pair(client_expects=fingerprints(OTHER_CERT))
    client.start(0.0)
    server.start(0.0)
    _, client_events, server_events = step_until(
        client,
        server,
        VirtualLink(),
        lambda ev: (
            any(isinstance(e, Failed) for e in ev[client])
            and any(isinstance(e, Closed) for e in ev[server])
        ),
    )
    (failure,) = client_events
    assert "fingerprint mismatch" in failure.error
    assert SERVER_CERT.fingerprint() in failure.error  # what we got
    assert OTHER_CERT.fingerprint() in failure.error  # what we expected
    assert client.state is DtlsState.FAILED
    with pytest.raises(DtlsStateError):
        client.send(b"x")
    assert server.state is DtlsState.CLOSED
    assert not any(isinstance(e, DataReceived) for e in server_events)


def test_server_rejects_wrong_client_fingerprint_and_client_sees_close():
    client, server = make_pair(server_expects=[("sha-1", "00:11"), ("sha-256", "AA:BB")])
    client.start(0.0)
    server.start(0.0)
    _, client_events, server_events = step_until(
        client,
        server,
        VirtualLink(),
        lambda ev: (
            any(isinstance(e, Failed) for e in ev[server])
            and any(isinstance(e, Closed) for e in ev[client])
        ),
    )
    (failure,) = server_events
    assert CLIENT_CERT.fingerprint() in failure.error and "sha-256 AA:BB" in failure.error
    assert client.state is DtlsState.CLOSED


def test_application_data_both_ways():
    client, server = make_pair()
    now, _, _ = handshake(client, server)
    link = VirtualLink()
    client.send(b"ping")
    server.send(b"pong")
    big = bytes(range(256)) * 4
    client.send(big)
    _, client_events, server_events = step_until(
        client,
        server,
        link,
        lambda ev: len(ev[server]) == 2 and len(ev[client]) == 1,
        start=now,
    )
    assert server_events == [DataReceived(b"ping"), DataReceived(big)]
    assert client_events == [DataReceived(b"pong")]
    stats = client.statistics()
    assert stats.application_bytes_sent == 4 + len(big)
    assert stats.application_bytes_received == 4
    with pytest.raises(ValueError):
        client.send(b"x" * (client.max_application_data() + 1))


def test_send_before_handshake_is_a_state_error():
    client, _ = make_pair()
    with pytest.raises(DtlsStateError):
        client.send(b"early")


@pytest.mark.parametrize("mtu", [1200, 300])
def test_datagrams_fit_mtu_and_hold_whole_records(mtu):
    client, server = make_pair(mtu=mtu)
    link = VirtualLink(mtu=mtu)
    now, _, _ = handshake(client, server, link)
    client.send(b"a" * client.max_application_data())
    server.send(b"b" * server.max_application_data())
    step_until(
        client, server, link, lambda ev: len(ev[server]) == 1 and len(ev[client]) == 1, start=now
    )
    assert len(link.sent) >= 6
    for datagram in link.sent:
        assert len(datagram) <= mtu
        records = parse_records_untrusted(datagram)  # raises if a record were split
        assert b"".join(r.to_bytes() for r in records) == datagram
    if mtu == 300:  # the certificate flight cannot fit one 300-byte datagram
        assert sum(1 for d in link.sent if d[0] == ContentType.HANDSHAKE) > 4


@pytest.mark.parametrize("seed", range(12))
def test_handshake_survives_loss_duplication_and_reordering(seed):
    client, server = make_pair()
    link = VirtualLink(seed=seed, loss=0.2, duplicate=0.1, reorder=0.3, delay=0.02)
    now, client_events, server_events = handshake(client, server, link)
    assert now < 30.0
    assert isinstance(client_events[-1], HandshakeComplete)
    assert isinstance(server_events[-1], HandshakeComplete)
    # The connection is usable afterwards, in both directions.
    client.send(b"after loss")
    server.send(b"ack")
    reliable = VirtualLink(seed=seed)
    _, client_events, server_events = step_until(
        client,
        server,
        reliable,
        lambda ev: DataReceived(b"after loss") in ev[server] and DataReceived(b"ack") in ev[client],
        start=now,
    )


def test_retransmissions_happen_over_a_lossy_link():
    total = 0
    for seed in range(12):
        client, server = make_pair()
        handshake(client, server, VirtualLink(seed=seed, loss=0.2, duplicate=0.1, reorder=0.3))
        total += client.statistics().retransmissions + server.statistics().retransmissions
    assert total > 0


def test_lost_final_flight_is_resent_when_client_retransmits():
    client, server = make_pair()
    client.start(0.0)
    server.start(0.0)
    now = 0.0
    # Flight 1 (ClientHello), flight 2 (server hello .. done), flight 3 (client finished).
    for sender, receiver in ((client, server), (server, client), (client, server)):
        while (d := sender.poll_transmit()) is not None:
            receiver.receive(d, now)
    assert server.state is DtlsState.CONNECTED
    while server.poll_transmit() is not None:  # flight 4 lost entirely
        pass
    deadline = client.poll_timeout()
    assert deadline == pytest.approx(1.0)
    client.handle_timeout(deadline)
    assert client.statistics().retransmissions == 1
    while (d := client.poll_transmit()) is not None:
        server.receive(d, deadline)
    assert server.statistics().retransmissions == 1
    while (d := server.poll_transmit()) is not None:
        client.receive(d, deadline)
    assert client.state is DtlsState.CONNECTED
    assert isinstance(client.poll_event(), HandshakeComplete)


def test_handshake_times_out_with_exponential_backoff():
    client = DtlsEndpoint("client", CLIENT_CERT, fingerprints(SERVER_CERT))
    client.start(0.0)
    first = client.poll_transmit()
    deadlines = []
    while client.state is DtlsState.HANDSHAKING:
        deadline = client.poll_timeout()
        deadlines.append(deadline)
        client.handle_timeout(deadline)
        if client.state is DtlsState.HANDSHAKING:
            assert client.poll_transmit() == first  # the same flight, byte for byte
    assert deadlines[:5] == [1.0, 3.0, 7.0, 15.0, 30.0]
    event = client.poll_event()
    assert isinstance(event, Failed) and "did not complete" in event.error
    assert client.poll_timeout() is None


def test_close_notify_closes_the_peer():
    client, server = make_pair()
    now, _, _ = handshake(client, server)
    client.close()
    assert client.state is DtlsState.CLOSED
    alert = client.poll_transmit()
    assert alert is not None and alert[0] == ContentType.ALERT
    server.receive(alert, now)
    assert server.poll_event() == Closed("peer sent close_notify")
    assert server.state is DtlsState.CLOSED
    reply = server.poll_transmit()  # the answering close_notify
    assert reply is not None and reply[0] == ContentType.ALERT
    client.receive(reply, now)  # ignored: already closed
    assert client.poll_event() is None
    with pytest.raises(DtlsStateError):
        server.send(b"late")
    client.close()  # idempotent


def test_srtp_keys_match_and_protect_rtp_between_the_pair():
    client, server = make_pair()
    handshake(client, server)
    profile, client_local, client_remote = export_srtp_keys(client)
    server_keys = export_srtp_keys(server)
    assert profile == server_keys.profile == "SRTP_AES128_CM_SHA1_80"
    assert client_local == server_keys.remote_key_salt
    assert client_remote == server_keys.local_key_salt
    assert len(client_local) == 30 and client_local != client_remote
    client_sessions = create_srtp_sessions(export_srtp_keys(client))
    server_sessions = create_srtp_sessions(server_keys)
    rtp = struct.pack("!BBHII", 0x80, 96, 1, 1234, 0xDEADBEEF) + b"media payload"
    protected = client_sessions.outbound.protect(rtp)
    assert protected != rtp and len(protected) == len(rtp) + 10  # 80-bit auth tag
    assert server_sessions.inbound.unprotect(protected) == rtp
    reply = server_sessions.outbound.protect(rtp)
    assert client_sessions.inbound.unprotect(reply) == rtp
    with pytest.raises(pylibsrtp.Error):  # a key from the wrong direction fails
        client_sessions.inbound.unprotect(protected)


def test_is_dtls_uses_rfc7983_ranges():
    assert is_dtls(b"\x16\xfe\xfd")
    assert is_dtls(bytes([20])) and is_dtls(bytes([63]))
    assert not is_dtls(b"") and not is_dtls(b"\x00\x01") and not is_dtls(bytes([64]))


def test_parser_rejects_truncation_and_bad_headers():
    record = DtlsRecord(ContentType.HANDSHAKE, 0xFEFD, 0, 7, b"abc")
    wire = record.to_bytes()
    assert parse_records_untrusted(wire + wire) == [record, record]
    for bad in (b"", wire[:-1], wire[:10], b"\x63" + wire[1:], wire[:1] + b"\x03\x03" + wire[3:]):
        with pytest.raises(DtlsParseError):
            parse_records_untrusted(bad)


records_strategy = st.lists(
    st.builds(
        DtlsRecord,
        st.sampled_from(list(ContentType)),
        st.sampled_from([0xFEFD, 0xFEFF]),
        st.integers(0, 3),
        st.integers(0, 2**48 - 1),
        st.binary(max_size=400),
    ),
    min_size=1,
    max_size=6,
)


@given(st.binary(max_size=2000))
def test_parser_raises_only_dtls_parse_error(data):
    try:
        records = parse_records_untrusted(data)
    except DtlsParseError:
        return
    assert b"".join(r.to_bytes() for r in records) == data


@given(records_strategy, st.integers(300, 1500))
def test_packing_round_trips_whole_records(records, mtu):
    datagrams = pack_records(records, mtu)
    parsed = [r for d in datagrams for r in parse_records_untrusted(d)]
    assert parsed == records
    for datagram in datagrams:
        assert len(datagram) <= mtu or len(parse_records_untrusted(datagram)) == 1


def _feed_only_parse_errors_or_failed(endpoint, datagrams):
    for datagram in datagrams:
        try:
            endpoint.receive(datagram, 0.0)
        except ParseError:
            pass
    while (event := endpoint.poll_event()) is not None:
        assert isinstance(event, (Failed, DataReceived, Closed))
    while endpoint.poll_transmit() is not None:
        pass


@given(
    st.lists(
        st.one_of(
            st.binary(max_size=300),
            records_strategy.map(lambda rs: b"".join(r.to_bytes() for r in rs)),
        ),
        max_size=4,
    )
)
def test_fresh_server_survives_arbitrary_datagrams(datagrams):
    server = DtlsEndpoint("server", SERVER_CERT, fingerprints(CLIENT_CERT))
    _feed_only_parse_errors_or_failed(server, datagrams)


_CONNECTED = make_pair()
handshake(*_CONNECTED)


@given(st.lists(records_strategy.map(lambda rs: b"".join(r.to_bytes() for r in rs)), max_size=4))
def test_connected_endpoint_survives_arbitrary_records(datagrams):
    # Forged records fail their MAC and are dropped, or fail the association; never raise.
    client, server = _CONNECTED
    _feed_only_parse_errors_or_failed(server, datagrams)
    if server.state is DtlsState.CONNECTED:
        client.send(b"still alive")
        server.receive(client.poll_transmit(), 0.0)
        assert server.poll_event() == DataReceived(b"still alive")


def test_receive_drops_malformed_and_oversized_datagrams_with_parse_error():
    client, server = make_pair()
    handshake(client, server)
    huge = DtlsRecord(ContentType.APPLICATION_DATA, 0xFEFD, 1, 99, b"x" * 9000).to_bytes() * 2
    for bad in (b"", b"\x00\x01junk", b"\x17\xfe\xfd\x00", huge):
        with pytest.raises(DtlsParseError):
            server.receive(bad, 1.0)
    assert server.statistics().datagrams_dropped == 4
    assert server.state is DtlsState.CONNECTED


def test_fingerprints_supplied_after_completion_are_still_enforced():
    client = DtlsEndpoint("client", CLIENT_CERT, None)
    server = DtlsEndpoint("server", SERVER_CERT, None)
    now, _, _ = handshake(client, server)
    client.set_remote_fingerprints(fingerprints(SERVER_CERT))
    assert client.state is DtlsState.CONNECTED and client.poll_event() is None
    server.set_remote_fingerprints(fingerprints(OTHER_CERT))
    failure = server.poll_event()
    assert isinstance(failure, Failed) and CLIENT_CERT.fingerprint() in failure.error
    client.receive(server.poll_transmit(), now)  # the close_notify
    assert client.poll_event() == Closed("peer sent close_notify")


# --- the data path: encrypt() / receive_application_data(), with and without the C path --


@pytest.fixture(params=["openssl-c-api", "pyopenssl-only"])
def connected_pair(request, monkeypatch):
    """A connected pair; the second variant runs without RecordCipher (pyOpenSSL's API)."""
    if request.param == "pyopenssl-only":
        monkeypatch.setattr(
            "darkswap_trio.proto.dtls._endpoint.record_cipher", lambda connection: None
        )
    client, server = make_pair()
    now, _, _ = handshake(client, server)
    assert (client._cipher is None) is (request.param == "pyopenssl-only")
    return client, server, now


def test_data_path_round_trip_and_counters(connected_pair):
    client, server, now = connected_pair
    sent_before, got_before = client.statistics(), server.statistics()  # the handshake
    payloads = [b"x", bytes(range(256)) * 4, bytes(client.max_application_data())]
    datagrams = [client.encrypt(payload) for payload in payloads]
    assert all(d is not None and d[0] == ContentType.APPLICATION_DATA for d in datagrams)
    assert max(len(d) for d in datagrams) <= client.mtu
    assert client.poll_transmit() is None  # handed to the caller, not queued
    received = []
    for datagram in datagrams:
        data = server.receive_application_data(datagram, now)
        while (event := server.poll_event()) is not None:  # the fallback queues events
            assert type(event) is DataReceived
            data = event.data
        received.append(data)
    assert received == payloads
    sent, got = client.statistics(), server.statistics()
    assert sent.datagrams_sent - sent_before.datagrams_sent == len(payloads)
    assert got.datagrams_received - got_before.datagrams_received == len(payloads)
    assert sent.bytes_sent - sent_before.bytes_sent == sum(map(len, datagrams))
    assert got.bytes_received - got_before.bytes_received == sum(map(len, datagrams))
    assert sent.application_bytes_sent == got.application_bytes_received == sum(map(len, payloads))
    assert client.encrypt(b"") is None
    with pytest.raises(ValueError):
        client.encrypt(bytes(client.max_application_data() + 1))


def test_data_path_drops_replays_and_forgeries(connected_pair):
    client, server, now = connected_pair
    datagram = client.encrypt(b"once")
    assert server.receive_application_data(datagram, now) in (b"once", None)
    while server.poll_event() is not None:
        pass
    # A replayed record and one with a flipped ciphertext bit: dropped, nothing delivered.
    forged = datagram[:-1] + bytes([datagram[-1] ^ 1])
    for bad in (datagram, forged):
        assert server.receive_application_data(bad, now) is None
        assert server.poll_event() is None
    assert server.state is DtlsState.CONNECTED
    assert server.statistics().application_bytes_received == 4


def test_data_path_hands_other_datagrams_to_receive(connected_pair):
    client, server, now = connected_pair
    with pytest.raises(DtlsParseError):
        server.receive_application_data(b"\x17\xfe\xfd", now)  # a truncated header
    client.close()
    alert = client.poll_transmit()
    assert server.receive_application_data(alert, now) is None
    assert server.poll_event() == Closed("peer sent close_notify")
    with pytest.raises(DtlsStateError):
        server.encrypt(b"late")
