"""Application-data records straight through OpenSSL's C API: the DTLS data path.

Once a DTLS association is up, a data channel transfer is one application-data record
per datagram, tens of thousands a second. pyOpenSSL's ``send``/``bio_read`` and
``bio_write``/``recv`` wrap each C call in Python checks, buffer allocations and error
translation: about 1 µs per record each way, as much as the AES-GCM itself.
:class:`RecordCipher` makes the same four C calls through pyOpenSSL's own cffi handles
(the same ``SSL*`` and memory BIOs, so OpenSSL's record sequence numbers and replay
window stay the only truth) and leaves every failure to pyOpenSSL, which reports it.

pyOpenSSL does not document those handles: if a release moves them,
:func:`record_cipher` returns None and the endpoint keeps to pyOpenSSL's public API.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL

_ffi: Any
_lib: Any
try:
    from OpenSSL import _util

    _ffi, _lib = _util.ffi, _util.lib
except (ImportError, AttributeError):  # pragma: no cover - a pyOpenSSL without its cffi module
    _ffi = _lib = None

__all__ = ["RecordCipher", "record_cipher"]

_BUFFER_SIZE = 65536  # larger than any DTLS record


class RecordCipher:
    """Encrypts and decrypts single application-data records of one connected SSL."""

    __slots__ = ("_buffer", "_from_ssl", "_into_ssl", "_ssl", "_view")

    def __init__(self, ssl: Any, into_ssl: Any, from_ssl: Any) -> None:
        self._ssl = ssl
        self._into_ssl = into_ssl
        self._from_ssl = from_ssl
        self._buffer = _ffi.new("char[]", _BUFFER_SIZE)
        self._view = _ffi.buffer(self._buffer)

    def encrypt(self, data: bytes) -> bytes | None:
        """The record(s) OpenSSL writes for ``data``, or None if it refused (then the
        same call through pyOpenSSL raises the reason)."""
        if _lib.SSL_write(self._ssl, data, len(data)) <= 0:
            return None
        size = _lib.BIO_read(self._from_ssl, self._buffer, _BUFFER_SIZE)
        return self._view[:size] if size > 0 else b""

    def decrypt(self, record: bytes) -> bytes | None:
        """The plaintext of one record; b"" if OpenSSL discarded it (a replayed or
        unauthentic record, which DTLS drops silently); None on any other outcome
        (an error, a close_notify), which pyOpenSSL's ``recv`` then reports."""
        _lib.BIO_write(self._into_ssl, record, len(record))
        ssl = self._ssl
        size = _lib.SSL_read(ssl, self._buffer, _BUFFER_SIZE)
        if size > 0:
            plaintext: bytes = self._view[:size]
            return plaintext
        if _lib.SSL_get_error(ssl, size) == _lib.SSL_ERROR_WANT_READ:
            return b""
        return None


def record_cipher(connection: SSL.Connection) -> RecordCipher | None:
    """A :class:`RecordCipher` on ``connection``'s memory BIOs, or None if this
    pyOpenSSL does not expose what it needs."""
    handles = [getattr(connection, name, None) for name in ("_ssl", "_into_ssl", "_from_ssl")]
    if _lib is None or _ffi is None or any(h is None for h in handles):
        return None
    return RecordCipher(*handles)
