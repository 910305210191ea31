"""Sans-IO DTLS 1.2 endpoint for WebRTC (RFC 6347, RFC 8827, RFC 8842, RFC 5764).

OpenSSL (through pyOpenSSL memory BIOs) does the cryptography and the handshake
state machine; this module owns what WebRTC needs around it:

* datagram boundaries: OpenSSL's output is split into records and whole records
  are packed into datagrams of at most ``mtu`` bytes (``OP_NO_QUERY_MTU``);
* retransmission in the caller's time: OpenSSL's own DTLS timer reads the real
  clock and pyOpenSSL cannot replace it (no ``DTLS_set_timer_cb``), so it could
  never fire under trio's MockClock or in simulated-time tests. We keep the last
  flight OpenSSL wrote and resend it ourselves on an RFC 6347 §4.2.4.1 timer
  (initial 1 s, doubling, capped), driven only by the ``now`` passed in. Resent
  records are byte-identical: a copy the peer already holds fails its replay
  check and is ignored, a lost one is accepted. The side that sends the final
  flight resends it whenever handshake records arrive after completion, which is
  what OpenSSL does natively for a retransmitted Finished;
* authentication by fingerprint: any peer certificate is accepted during the
  handshake (self-signed, RFC 8827 §6.5), then checked against the fingerprints
  from the SDP before :class:`HandshakeComplete` is reported;
* DTLS-SRTP: ``use_srtp`` is offered because some stacks (aiortc) fail the
  transport without a negotiated SRTP profile.

Surface: ``start``/``receive``/``send``/``close``, ``poll_transmit``,
``poll_event``, ``poll_timeout``/``handle_timeout``, ``statistics``.
"""

from __future__ import annotations

from collections import deque

from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from ..errors import DtlsParseError
from ._certificate import DtlsCertificate, certificate_fingerprint, fingerprint_matches
from ._events import (
    Closed,
    DataReceived,
    DtlsEvent,
    DtlsState,
    DtlsStateError,
    DtlsStatistics,
    Failed,
    HandshakeComplete,
    Role,
)
from ._record_cipher import RecordCipher, record_cipher
from ._records import ContentType, is_dtls, pack_records, parse_records_untrusted

__all__ = [
    "SRTP_PROFILES",
    "Closed",
    "DataReceived",
    "DtlsEndpoint",
    "DtlsEvent",
    "DtlsParseError",
    "DtlsState",
    "DtlsStateError",
    "DtlsStatistics",
    "Failed",
    "HandshakeComplete",
    "dtls_context",
    "is_dtls",
]

#: SRTP protection profiles we offer, in preference order (RFC 5764, RFC 7714).
SRTP_PROFILES = b"SRTP_AES128_CM_SHA1_80:SRTP_AEAD_AES_128_GCM"

# ECDSA certificates only: forward-secret AEAD suites every browser offers.
_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-SHA"
)
_DTLS1_2_VERSION = 0xFEFD  # pyOpenSSL exports no constant for it
_MIN_MTU = 256  # below this OpenSSL refuses SSL_set_mtu (dtls1_link_min_mtu)
_MAX_DATAGRAM = 16384  # well above any path MTU, below OpenSSL's DTLS read buffer
_READ_SIZE = 65536  # larger than any record, so a record is never read in pieces

_HANDSHAKE_TYPES = (ContentType.HANDSHAKE, ContentType.CHANGE_CIPHER_SPEC)


def dtls_context(certificate: DtlsCertificate) -> SSL.Context:
    """The OpenSSL context of an endpoint with ``certificate``, in either role.

    A caller may make it ahead of time (the peer connection does, with its
    certificate) and pass it to :class:`DtlsEndpoint`: making it loads our key and
    certificate into OpenSSL and, first in a process, initialises the library --
    about 1 ms warm and ~9 ms cold, which would otherwise fall between receiving an
    offer and answering it. One context per endpoint, as without it: OpenSSL's
    session cache lives in the context, and sessions must not be shared by
    connections.
    """
    context = SSL.Context(SSL.DTLS_METHOD)
    context.set_min_proto_version(_DTLS1_2_VERSION)
    context.set_max_proto_version(_DTLS1_2_VERSION)
    # NO_QUERY_MTU: a memory BIO cannot report a path MTU, and without the flag
    # OpenSSL replaces ours with a guess. NO_RENEGOTIATION: WebRTC never
    # renegotiates, and a ClientHello after completion must not restart anything.
    context.set_options(SSL.OP_NO_QUERY_MTU | SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_TICKET)
    context.set_cipher_list(_CIPHERS)
    context.use_certificate(certificate.certificate)
    context.use_privatekey(certificate.private_key)
    # Self-signed peers: accept here, compare fingerprints after the handshake.
    context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _accept_any_certificate)
    context.set_tlsext_use_srtp(SRTP_PROFILES)
    return context


class DtlsEndpoint:
    """One end of a DTLS 1.2 association, driven entirely by its caller.

    ``role`` comes from SDP ``a=setup`` (RFC 8842: ``active`` is the client).
    ``remote_fingerprints`` is the list of ``(algorithm, value)`` pairs from the
    peer's SDP; ``None`` means "not known yet": supply them with
    :meth:`set_remote_fingerprints`, otherwise any certificate is accepted and the
    caller must check :attr:`HandshakeComplete.remote_fingerprint` itself.
    ``context``: :func:`dtls_context` of ``certificate``, made ahead (else made here).
    """

    def __init__(
        self,
        role: Role,
        certificate: DtlsCertificate,
        remote_fingerprints: list[tuple[str, str]] | None = None,
        mtu: int = 1200,
        *,
        initial_retransmit_timeout: float = 1.0,
        max_retransmit_timeout: float = 60.0,
        handshake_timeout: float = 30.0,
        context: SSL.Context | None = None,
    ) -> None:
        if role not in ("client", "server"):
            raise ValueError(f"role must be 'client' or 'server', not {role!r}")
        if mtu < _MIN_MTU:
            raise ValueError(f"mtu must be at least {_MIN_MTU}, not {mtu}")
        self.role: Role = role
        self.certificate = certificate
        self.mtu = mtu
        self._remote_fingerprints = (
            None if remote_fingerprints is None else list(remote_fingerprints)
        )
        self._initial_rto = initial_retransmit_timeout
        self._max_rto = max_retransmit_timeout
        self._handshake_timeout = handshake_timeout

        context = dtls_context(certificate) if context is None else context
        self._ssl = SSL.Connection(context, None)
        self._ssl.set_ciphertext_mtu(mtu)
        if role == "client":
            self._ssl.set_connect_state()
        else:
            self._ssl.set_accept_state()

        self.state = DtlsState.NEW
        self.srtp_profile: str | None = None
        self.remote_fingerprint: str | None = None
        self._remote_der: bytes | None = None
        self._transmits: deque[bytes] = deque()
        self._events: deque[DtlsEvent] = deque()
        self._flight: list[bytes] = []  # last handshake flight, for retransmission
        self._seen_handshake_records: set[tuple[int, int]] = set()  # (epoch, sequence)
        self._rto = initial_retransmit_timeout
        self._retransmit_at: float | None = None
        self._handshake_deadline: float | None = None
        self._datagrams_sent = 0
        self._bytes_sent = 0
        self._datagrams_received = 0
        self._bytes_received = 0
        self._datagrams_dropped = 0
        self._retransmissions = 0
        self._app_bytes_sent = 0
        self._app_bytes_received = 0
        self._cleartext_mtu: int | None = None
        self._cipher: RecordCipher | None = None  # the data path, once connected

    # ----------------------------------------------------------------- inputs

    def start(self, now: float) -> None:
        """Begin the handshake: a client sends its ClientHello, a server starts waiting."""
        if self.state is not DtlsState.NEW:
            return
        self.state = DtlsState.HANDSHAKING
        self._handshake_deadline = now + self._handshake_timeout
        if self.role == "client":
            self._drive(now)

    def set_remote_fingerprints(self, fingerprints: list[tuple[str, str]]) -> None:
        """Supply the peer's SDP fingerprints; checked now if the handshake already finished.

        A mismatch after completion closes the association and emits :class:`Failed`.
        """
        self._remote_fingerprints = list(fingerprints)
        if self.state is DtlsState.CONNECTED and self._remote_der is not None:
            self._check_fingerprint(self._remote_der)

    def receive(self, datagram: bytes, now: float) -> None:
        """Feed one datagram from the peer (untrusted).

        Raises :class:`DtlsParseError` (and drops the datagram) if it is not a
        sequence of whole DTLS records; every protocol failure inside the
        records becomes a :class:`Failed` event instead.
        """
        if self.state is DtlsState.CONNECTED and _is_one_application_record(datagram):
            data = self._decrypt(datagram)
            if data is not None:
                self._events.append(DataReceived(data))
            return
        if self.state in (DtlsState.CLOSED, DtlsState.FAILED):
            self._datagrams_dropped += 1
            return
        try:
            if len(datagram) > _MAX_DATAGRAM:
                # OpenSSL reads at most this much per datagram from its memory BIO;
                # the rest would be glued onto the next datagram and spoil it.
                raise DtlsParseError(f"datagram of {len(datagram)} bytes is too large")
            records = parse_records_untrusted(datagram)
        except DtlsParseError:
            self._datagrams_dropped += 1
            raise
        self._datagrams_received += 1
        self._bytes_received += len(datagram)
        if self.state is DtlsState.NEW:
            self.start(now)
        # Handshake records after completion mean the peer lost our final flight.
        peer_lost_final_flight = self.state is DtlsState.CONNECTED and any(
            r.content_type in _HANDSHAKE_TYPES for r in records
        )
        # A datagram of handshake records we already hold is the peer resending its
        # last flight: ours was lost, so resend it now instead of waiting for our
        # timer (RFC 6347 §4.2.4). Flights progress, so this cannot ping-pong.
        keys = {(r.epoch, r.sequence_number) for r in records}
        peer_resent_flight = (
            self.state is DtlsState.HANDSHAKING
            and all(r.content_type in _HANDSHAKE_TYPES for r in records)
            and keys <= self._seen_handshake_records
        )
        if self.state is DtlsState.HANDSHAKING and len(self._seen_handshake_records) < 1024:
            self._seen_handshake_records |= keys
        sent_before = len(self._transmits)
        self._ssl.bio_write(bytes(datagram))
        self._drive(now)
        produced_output = len(self._transmits) != sent_before
        if self._flight and not produced_output:
            if (peer_lost_final_flight and self.state is DtlsState.CONNECTED) or (
                peer_resent_flight and self.state is DtlsState.HANDSHAKING
            ):
                self._retransmit_flight()

    def receive_application_data(self, datagram: bytes, now: float) -> bytes | None:
        """:meth:`receive` for the data path: returns the plaintext of a datagram that is
        exactly one application-data record instead of queuing a :class:`DataReceived`.

        Returns None for every other datagram (handled by :meth:`receive`) and for a
        record OpenSSL discards: poll events then. Raises like :meth:`receive`.
        """
        cipher = self._cipher  # set exactly while connected
        size = len(datagram)
        if (
            cipher is not None
            and 13 < size <= _MAX_DATAGRAM
            and datagram[0] == 23
            and int.from_bytes(datagram[11:13], "big") + 13 == size
            and type(datagram) is bytes
        ):  # _decrypt(), inlined: this is the per-datagram path of a transfer
            self._datagrams_received += 1
            self._bytes_received += size
            data = cipher.decrypt(datagram)
            if data:
                self._app_bytes_received += len(data)
                return data
            if data is None:
                self._read_application_data()  # events: what went wrong
            return None  # or a replayed or unauthentic record: OpenSSL dropped it
        self.receive(datagram, now)
        return None

    def _decrypt(self, datagram: bytes) -> bytes | None:
        """One application-data record: no record parsing and no output collection (such
        a record never makes OpenSSL write anything: WebRTC never renegotiates)."""
        self._datagrams_received += 1
        self._bytes_received += len(datagram)
        datagram = datagram if type(datagram) is bytes else bytes(datagram)
        if self._cipher is not None:
            data = self._cipher.decrypt(datagram)
            if data:
                self._app_bytes_received += len(data)
                return data
            if data is not None:
                return None  # a replayed or unauthentic record: OpenSSL dropped it
        else:
            self._ssl.bio_write(datagram)
        self._read_application_data()  # events: the data, or what went wrong
        return None

    def send(self, data: bytes) -> None:
        """Encrypt ``data`` as one application-data record.

        Raises :class:`DtlsStateError` unless connected, and :class:`ValueError` if
        ``data`` would not fit one datagram (see :meth:`max_application_data`).
        """
        datagram = self._encrypt(data)
        if datagram is not None:
            self._transmits.append(datagram)

    def encrypt(self, data: bytes) -> bytes | None:
        """:meth:`send` for the data path: returns the datagram (one record) for the
        caller to send itself, after anything :meth:`poll_transmit` still holds.

        Returns None when there is nothing to send (empty ``data``; a failure, which
        queues a :class:`Failed` event). Raises like :meth:`send`.
        """
        cipher = self._cipher  # set exactly while connected
        size = len(data)
        if cipher is not None and 0 < size <= (self._cleartext_mtu or 0) and type(data) is bytes:
            datagram = cipher.encrypt(data)  # _encrypt(), inlined for the data path
            if datagram is not None:
                if not datagram:
                    return None  # unreachable: OpenSSL wrote the record somewhere
                self._app_bytes_sent += size
                self._datagrams_sent += 1
                self._bytes_sent += len(datagram)
                return datagram
        datagram = self._encrypt(data)
        if datagram is not None:
            self._datagrams_sent += 1
            self._bytes_sent += len(datagram)
        return datagram

    def _encrypt(self, data: bytes) -> bytes | None:
        if self.state is not DtlsState.CONNECTED:
            raise DtlsStateError(f"cannot send in state {self.state.value}")
        size = len(data)
        if size > self.max_application_data():
            raise ValueError(
                f"{size} bytes exceed one record within the {self.mtu}-byte MTU "
                f"({self.max_application_data()} bytes)"
            )
        if not size:
            return None  # an empty record carries nothing and some stacks reject it
        data = data if type(data) is bytes else bytes(data)
        output = None if self._cipher is None else self._cipher.encrypt(data)
        if output is None:
            try:
                self._ssl.send(data)
                output = self._ssl.bio_read(_READ_SIZE)
            except SSL.Error as exc:
                self._fail(f"DTLS send failed: {_describe(exc)}")
                return None
        self._app_bytes_sent += size
        # One record within the MTU (the size check above): it is the whole datagram.
        return output or None

    def max_application_data(self) -> int:
        """Largest payload :meth:`send` accepts: what fits one record in one datagram."""
        if self._cleartext_mtu is None:
            if self.state is not DtlsState.CONNECTED:
                return self._ssl.get_cleartext_mtu()  # the cipher suite decides it
            self._cleartext_mtu = self._ssl.get_cleartext_mtu()
        return self._cleartext_mtu

    def close(self) -> None:
        """Send close_notify (if connected) and stop. Idempotent; emits no event."""
        if self.state is DtlsState.CONNECTED:
            try:
                self._ssl.shutdown()
            except SSL.Error:
                pass  # nothing more we can tell the peer
            self._collect_output()
        if self.state not in (DtlsState.FAILED,):
            self.state = DtlsState.CLOSED
        self._cipher = None
        self._stop_timers()

    def handle_timeout(self, now: float) -> None:
        """Fire whatever timers are due at ``now``: handshake deadline, retransmission."""
        if self.state is not DtlsState.HANDSHAKING:
            return
        if self._handshake_deadline is not None and now >= self._handshake_deadline:
            self._fail(f"DTLS handshake did not complete within {self._handshake_timeout:g} s")
            return
        if self._retransmit_at is not None and now >= self._retransmit_at:
            self._retransmit_flight()
            self._rto = min(self._rto * 2, self._max_rto)
            self._retransmit_at = now + self._rto

    # ---------------------------------------------------------------- outputs

    def poll_transmit(self) -> bytes | None:
        """Next datagram to send (at most ``mtu`` bytes, whole records), or None."""
        if not self._transmits:
            return None
        datagram = self._transmits.popleft()
        self._datagrams_sent += 1
        self._bytes_sent += len(datagram)
        return datagram

    def poll_event(self) -> DtlsEvent | None:
        """Next event, or None."""
        return self._events.popleft() if self._events else None

    def poll_timeout(self) -> float | None:
        """Earliest deadline at which :meth:`handle_timeout` must be called, or None."""
        if self.state is not DtlsState.HANDSHAKING:
            return None
        deadlines = [d for d in (self._retransmit_at, self._handshake_deadline) if d is not None]
        return min(deadlines) if deadlines else None

    def export_keying_material(self, label: bytes, length: int) -> bytes:
        """RFC 5705 exporter (used for DTLS-SRTP keys); only once connected."""
        if self.state is not DtlsState.CONNECTED:
            raise DtlsStateError(f"no keying material in state {self.state.value}")
        return self._ssl.export_keying_material(label, length)

    def statistics(self) -> DtlsStatistics:
        """Snapshot of the counters."""
        return DtlsStatistics(
            state=self.state,
            role=self.role,
            datagrams_sent=self._datagrams_sent,
            bytes_sent=self._bytes_sent,
            datagrams_received=self._datagrams_received,
            bytes_received=self._bytes_received,
            datagrams_dropped=self._datagrams_dropped,
            retransmissions=self._retransmissions,
            application_bytes_sent=self._app_bytes_sent,
            application_bytes_received=self._app_bytes_received,
            srtp_profile=self.srtp_profile,
        )

    # -------------------------------------------------------------- internals

    def _drive(self, now: float) -> None:
        """Let OpenSSL consume buffered input, then collect its output and events."""
        if self.state is DtlsState.HANDSHAKING:
            try:
                self._ssl.do_handshake()
            except SSL.WantReadError:
                self._collect_flight(now)
                return
            except SSL.Error as exc:
                self._fail(f"DTLS handshake failed: {_describe(exc)}")
                return
            # Keep our output only if we sent the final flight: it is what we
            # resend if the peer's handshake records show it never arrived.
            self._flight = self._collect_output()
            self._stop_timers()
            if not self._finish_handshake():
                return
        if self.state is DtlsState.CONNECTED:
            self._read_application_data()

    def _finish_handshake(self) -> bool:
        """Check the peer's certificate against its fingerprints; report the outcome."""
        certificate = self._ssl.get_peer_certificate(as_cryptography=True)
        if certificate is None:  # VERIFY_FAIL_IF_NO_PEER_CERT makes this unreachable
            self._fail("peer presented no certificate")
            return False
        der = certificate.public_bytes(serialization.Encoding.DER)
        self._remote_der = der
        self.remote_fingerprint = f"sha-256 {certificate_fingerprint(der, 'sha-256')}"
        if not self._check_fingerprint(der):
            return False
        profile = self._ssl.get_selected_srtp_profile()
        self.srtp_profile = profile.decode("ascii") if profile else None
        self.state = DtlsState.CONNECTED
        self._cleartext_mtu = self._ssl.get_cleartext_mtu()
        self._cipher = record_cipher(self._ssl)
        self._events.append(HandshakeComplete(self.srtp_profile, self.remote_fingerprint))
        return True

    def _check_fingerprint(self, der: bytes) -> bool:
        """Compare the peer certificate with the expected fingerprints; fail on mismatch."""
        expected = self._remote_fingerprints
        if expected is None or fingerprint_matches(der, expected):
            return True
        wanted = ", ".join(f"{algorithm} {value}" for algorithm, value in expected)
        # close_notify so the peer learns now rather than at its own timeout.
        try:
            self._ssl.shutdown()
        except SSL.Error:
            pass
        self._collect_output()
        self._fail(
            f"DTLS peer certificate fingerprint mismatch: "
            f"got {self.remote_fingerprint}, expected {wanted or '(none)'}"
        )
        return False

    def _read_application_data(self) -> None:
        while True:
            try:
                data = self._ssl.recv(_READ_SIZE)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                # Answer close_notify with our own, as TLS 1.2 §7.2.1 asks.
                try:
                    self._ssl.shutdown()
                except SSL.Error:
                    pass
                self._collect_output()
                self.state = DtlsState.CLOSED
                self._cipher = None
                self._events.append(Closed("peer sent close_notify"))
                return
            except SSL.Error as exc:
                self._fail(f"DTLS connection failed: {_describe(exc)}")
                return
            self._app_bytes_received += len(data)
            self._events.append(DataReceived(data))
        self._collect_output()

    def _collect_flight(self, now: float) -> None:
        """Collect output written during the handshake; it replaces the stored flight."""
        datagrams = self._collect_output()
        if datagrams:
            self._flight = datagrams
            self._rto = self._initial_rto
            self._retransmit_at = now + self._rto

    def _collect_output(self) -> list[bytes]:
        """Drain OpenSSL's write BIO into MTU-sized datagrams of whole records."""
        chunks = []
        while True:
            try:
                chunks.append(self._ssl.bio_read(_READ_SIZE))
            except SSL.WantReadError:
                break
        if not chunks:
            return []
        # OpenSSL's own output: a parse failure here is a bug, not hostile input.
        datagrams = pack_records(parse_records_untrusted(b"".join(chunks)), self.mtu)
        self._transmits.extend(datagrams)
        return datagrams

    def _retransmit_flight(self) -> None:
        self._retransmissions += 1
        self._transmits.extend(self._flight)

    def _stop_timers(self) -> None:
        self._retransmit_at = None
        self._handshake_deadline = None

    def _fail(self, error: str) -> None:
        self._collect_output()  # a fatal alert OpenSSL queued still goes out
        self.state = DtlsState.FAILED
        self._cipher = None
        self._flight = []
        self._stop_timers()
        self._events.append(Failed(error))


def _is_one_application_record(datagram: bytes) -> bool:
    size = len(datagram)
    return (
        13 < size <= _MAX_DATAGRAM
        and datagram[0] == 23
        and int.from_bytes(datagram[11:13], "big") + 13 == size
    )


def _accept_any_certificate(*_args: object) -> bool:
    return True


def _describe(exc: SSL.Error) -> str:
    """OpenSSL errors arrive as nested tuples; flatten them into one readable line."""
    details = exc.args[0] if exc.args else None
    if isinstance(details, list) and details:
        return "; ".join(
            ": ".join(str(part) for part in entry if part)
            if isinstance(entry, tuple)
            else str(entry)
            for entry in details
        )
    return f"{type(exc).__name__}: {exc}"
