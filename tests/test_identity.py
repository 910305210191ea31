import pytest
from hypothesis import given
from hypothesis import strategies as st

from darkswap_trio import (
    Keypair,
    ParseError,
    PeerId,
    PeerIdError,
    load_or_create_keypair,
    parse_peer_id,
)
from darkswap_trio._base58 import ALPHABET, b58decode, b58encode

GUIDE_PEER = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"


def test_guide_example_parses_and_inlines_ed25519():
    peer = parse_peer_id(GUIDE_PEER)
    assert str(peer) == GUIDE_PEER
    assert peer.key_type == 1
    peer.ed25519_public_key()


def test_sha256_peer_id_parses_but_has_no_key():
    peer = parse_peer_id("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")
    assert peer.key_type is None
    with pytest.raises(PeerIdError):
        peer.ed25519_public_key()
    assert not peer.verify(b"m", b"\0" * 64)


@pytest.mark.parametrize(
    "bad",
    ["", "peer1", "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXT", "0OIl", "x" * 500,
     "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTNN"],
)
def test_invalid_ids_are_clear_errors(bad):
    with pytest.raises(PeerIdError) as info:
        parse_peer_id(bad)
    assert "peer id" in str(info.value)


def test_non_string_refused():
    with pytest.raises(PeerIdError):
        PeerId.from_string(b"12D3" )  # type: ignore[arg-type]


def test_sign_verify_and_roundtrip():
    pair = Keypair.generate()
    assert str(pair.peer_id).startswith("12D3KooW")
    sig = pair.sign(b"hello")
    assert pair.peer_id.verify(b"hello", sig)
    assert not pair.peer_id.verify(b"hellO", sig)
    assert not Keypair.generate().peer_id.verify(b"hello", sig)
    assert parse_peer_id(str(pair.peer_id)) == pair.peer_id
    assert Keypair.from_protobuf(pair.to_protobuf()).peer_id == pair.peer_id


def test_key_file_created_once_then_loaded(tmp_path):
    path = tmp_path / "keys" / "peer.key"
    first = load_or_create_keypair(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create_keypair(path).peer_id == first.peer_id


def test_corrupt_key_file_is_an_error(tmp_path):
    path = tmp_path / "peer.key"
    path.write_bytes(b"\x08\x01\x12\x05hello")
    with pytest.raises(PeerIdError):
        load_or_create_keypair(path)


@given(st.binary(max_size=60))
def test_base58_roundtrip(data):
    assert b58decode(b58encode(data)) == data


@given(st.text(alphabet=ALPHABET, max_size=80) | st.text(max_size=80))
def test_any_string_raises_only_parse_error(text):
    try:
        parse_peer_id(text)
    except ParseError:
        pass


@given(st.binary(max_size=60))
def test_any_multihash_bytes_raise_only_parse_error(raw):
    try:
        parse_peer_id(b58encode(raw))
    except ParseError:
        pass
