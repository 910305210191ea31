"""DTLS 1.2 (RFC 6347) as a sans-IO endpoint over pyOpenSSL memory BIOs, with WebRTC's certificate fingerprints.

Drivers use only the names below; the underscored modules are the endpoint's parts."""

from ..errors import DtlsParseError as DtlsParseError
from ._certificate import DtlsCertificate as DtlsCertificate
from ._endpoint import DtlsEndpoint as DtlsEndpoint
from ._endpoint import dtls_context as dtls_context
from ._events import Closed as Closed
from ._events import DataReceived as DataReceived
from ._events import DtlsEvent as DtlsEvent
from ._events import DtlsState as DtlsState
from ._events import DtlsStateError as DtlsStateError
from ._events import DtlsStatistics as DtlsStatistics
from ._events import Failed as Failed
from ._events import HandshakeComplete as HandshakeComplete
