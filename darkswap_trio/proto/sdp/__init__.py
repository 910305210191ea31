"""SDP for WebRTC data channels (RFC 8866, RFC 8841, RFC 8839): offers, answers and candidate lines.

Drivers use only the names below; the underscored modules are the parser's parts."""

from ._description import DtlsFingerprint as DtlsFingerprint
from ._description import DtlsRole as DtlsRole
from ._description import DtlsSetup as DtlsSetup
from ._description import IceCandidate as IceCandidate
from ._description import LocalTransport as LocalTransport
from ._description import SessionDescription as SessionDescription
from ._description import answer_setup_for as answer_setup_for
from ._description import dtls_role_from_answer as dtls_role_from_answer
from ._description import generate_ice_credentials as generate_ice_credentials
from ._description import parse_candidate_untrusted as parse_candidate_untrusted
from ._description import parse_sdp_untrusted as parse_sdp_untrusted
from ._description import render_answer as render_answer
from ._description import render_candidate as render_candidate
from ._description import render_offer as render_offer
