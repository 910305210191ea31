"""AES-GCM DTLS records of our own (AeadRecords) against OpenSSL's: the same keys, the same
records, both ways; the replay window; and any bytes raise only DtlsParseError."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_dtls import handshake, make_pair  # pytest puts this directory on sys.path

from darkswap_trio.proto.dtls import _endpoint
from darkswap_trio.proto.dtls._aead_records import AeadRecords, tls12_prf
from darkswap_trio.proto.dtls._records import ContentType, parse_records_untrusted
from darkswap_trio.proto.errors import DtlsParseError

SUITES = {
    b"ECDHE-ECDSA-AES128-GCM-SHA256": True,
    b"ECDHE-ECDSA-AES256-GCM-SHA384": True,
    b"ECDHE-ECDSA-CHACHA20-POLY1305": False,  # OpenSSL's record layer stays
}


def connected(monkeypatch, ciphers: bytes = b"ECDHE-ECDSA-AES128-GCM-SHA256"):
    monkeypatch.setattr(_endpoint, "_CIPHERS", ciphers)
    client, server = make_pair()
    now, _, _ = handshake(client, server)
    return client, server, now


def openssl_seal(endpoint, data: bytes) -> bytes:
    """A record OpenSSL writes (the endpoint's own record layer bypassed)."""
    endpoint._ssl.send(data)
    return endpoint._ssl.bio_read(65536)


def openssl_open(endpoint, record: bytes) -> bytes:
    endpoint._ssl.bio_write(record)
    return endpoint._ssl.recv(65536)


@pytest.mark.parametrize("suite", list(SUITES))
def test_the_suite_decides_who_protects_records(monkeypatch, suite):
    client, server, now = connected(monkeypatch, suite)
    assert client._ssl.get_cipher_name().encode() == suite
    assert (client._aead is not None) is (server._aead is not None) is SUITES[suite]
    for sender, receiver in ((client, server), (server, client)):
        assert receiver.receive_application_data(sender.encrypt(b"hello"), now) == b"hello"


@pytest.mark.parametrize("suite", [s for s, ours in SUITES.items() if ours])
def test_key_derivation_matches_openssl(monkeypatch, suite):
    """Our TLS 1.2 PRF gives OpenSSL's RFC 5705 exporter output from the same secrets."""
    client, _, _ = connected(monkeypatch, suite)
    ssl = client._ssl
    hash_name = "sha384" if suite.endswith(b"SHA384") else "sha256"
    seed = ssl.client_random() + ssl.server_random()
    label = b"EXTRACTOR-dtls_srtp"
    ours = tls12_prf(ssl.master_key(), label, seed, 60, hash_name)
    assert ours == ssl.export_keying_material(label, 60)


@pytest.mark.parametrize("suite", [s for s, ours in SUITES.items() if ours])
def test_records_openssl_writes_open_and_ours_open_in_openssl(monkeypatch, suite):
    """Known answers from OpenSSL itself: the peer's OpenSSL seals, our AeadRecords opens;
    our AeadRecords seals, the peer's OpenSSL opens (it checks tag, nonce and sequence)."""
    client, server, _ = connected(monkeypatch, suite)
    for ours, theirs in ((client, server), (server, client)):
        aead = ours._aead
        assert aead is not None
        for size in (1, 100, ours.max_application_data()):
            payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
            record = openssl_seal(theirs, payload)
            (parsed,) = parse_records_untrusted(record)
            assert parsed.content_type is ContentType.APPLICATION_DATA
            assert aead.open_untrusted(record) == (23, payload)
            assert aead.open_untrusted(record) is None  # a replay
            assert openssl_open(theirs, aead.seal(23, payload)) == payload


def test_our_records_follow_openssl_sequence_numbers(monkeypatch):
    """Our first record takes the sequence number after our Finished (epoch 1)."""
    client, server, _ = connected(monkeypatch)
    for endpoint in (client, server):
        (record,) = parse_records_untrusted(endpoint.encrypt(b"x"))
        assert (record.epoch, record.sequence_number) == (1, endpoint._last_written[1] + 1)
        assert endpoint._last_written[0] == 1


def pair_of_records() -> tuple[AeadRecords, AeadRecords]:
    keys = (bytes(range(16)), b"salt", bytes(range(16, 32)), b"tlas")
    sender = AeadRecords(*keys, epoch=1, next_write_sequence=0)
    receiver = AeadRecords(keys[2], keys[3], keys[0], keys[1], epoch=1, next_write_sequence=0)
    return sender, receiver


def test_replay_window():
    sender, receiver = pair_of_records()
    records = [sender.seal(23, bytes([i])) for i in range(200)]
    assert receiver.open_untrusted(records[100]) == (23, b"\x64")
    assert receiver.open_untrusted(records[37]) == (23, b"\x25")  # late, inside the window
    assert receiver.open_untrusted(records[36]) is None  # 64 behind the highest: too old
    assert receiver.open_untrusted(records[37]) is None  # seen
    assert receiver.open_untrusted(records[199]) == (23, b"\xc7")  # a jump of 99
    assert receiver.open_untrusted(records[150]) == (23, b"\x96")
    assert receiver.open_untrusted(records[100]) is None  # out of the window now
    assert receiver.dropped == 3


def test_unauthentic_or_foreign_records_are_dropped():
    sender, receiver = pair_of_records()
    record = bytearray(sender.seal(23, b"payload"))
    for position in (0, 2, 4, 10, 14, 25, len(record) - 1):  # header, nonce, data, tag
        forged = bytearray(record)
        forged[position] ^= 1
        assert receiver.open_untrusted(bytes(forged)) is None
    other_epoch = AeadRecords(bytes(range(16)), b"salt", bytes(16), bytes(4), 2, 0)
    assert receiver.open_untrusted(other_epoch.seal(23, b"x")) is None
    assert receiver.open_untrusted(bytes(record)) == (23, b"payload")  # nothing moved


@given(st.binary(max_size=200))
def test_open_untrusted_raises_only_dtls_parse_error(data):
    _, receiver = pair_of_records()
    try:
        assert receiver.open_untrusted(data) is None
    except DtlsParseError:
        pass


@given(st.binary(min_size=1, max_size=64), st.integers(0, 100), st.integers(0, 255))
def test_any_corruption_of_a_real_record_is_dropped(payload, position, value):
    sender, receiver = pair_of_records()
    record = bytearray(sender.seal(23, payload))
    position %= len(record)
    if record[position] == value:
        return
    record[position] = value
    try:
        assert receiver.open_untrusted(bytes(record)) is None
    except DtlsParseError:
        assert position in (11, 12)  # the length field


def test_endpoint_close_notify_and_fatal_alerts_with_our_records(monkeypatch):
    client, server, now = connected(monkeypatch)
    # A fatal alert (level 2) sealed by the peer fails the association.
    server.receive(client._aead.seal(ContentType.ALERT, b"\x02\x28"), now)
    failure = server.poll_event()
    assert failure is not None and "fatal alert 28" in failure.error
    client2, server2, now = connected(monkeypatch)
    client2.close()
    server2.receive(client2.poll_transmit(), now)
    assert server2.poll_event() == _endpoint.Closed("peer sent close_notify")
    reply = server2.poll_transmit()  # our close_notify in answer, one record of ours
    (record,) = parse_records_untrusted(reply)
    assert record.content_type is ContentType.ALERT and record.epoch == 1
