from hypothesis import given
from hypothesis import strategies as st

from darkswap_trio.proto.demux import DatagramKind, classify
from darkswap_trio.proto.stun import binding_request


def test_rfc7983_ranges():
    assert classify(bytes(binding_request())) is DatagramKind.STUN
    assert classify(b"\x16\xfe\xfd" + bytes(10)) is DatagramKind.DTLS  # handshake record
    assert classify(b"\x17\xfe\xfd") is DatagramKind.DTLS  # application data
    assert classify(b"\x80\x60") is DatagramKind.OTHER  # RTP
    assert classify(b"\x40") is DatagramKind.OTHER  # TURN channel
    assert classify(b"") is DatagramKind.OTHER


@given(st.binary(max_size=8))
def test_classify_total(data):
    kind = classify(data)
    if data and data[0] <= 3:
        assert kind is DatagramKind.STUN
    elif data and 20 <= data[0] <= 63:
        assert kind is DatagramKind.DTLS
    else:
        assert kind is DatagramKind.OTHER
