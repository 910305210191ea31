import pytest
from base58 import BITCOIN_ALPHABET
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
from darkswap_trio.proto.identity import b58decode, b58encode

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
    [
        "",
        "peer1",
        "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXT",
        "0OIl",
        "x" * 500,
        "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTNN",
    ],
)
def test_invalid_ids_are_clear_errors(bad):
    with pytest.raises(PeerIdError) as info:
        parse_peer_id(bad)
    assert "peer id" in str(info.value)


def test_non_string_refused():
    with pytest.raises(PeerIdError):
        PeerId.from_string(b"12D3")  # type: ignore[arg-type]


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


@given(st.text(alphabet=BITCOIN_ALPHABET.decode(), max_size=80))
def test_base58_decode_agrees_with_the_base58_package(text):
    import base58

    assert b58decode(text) == base58.b58decode(text)


@pytest.mark.parametrize("text", [GUIDE_PEER + " ", GUIDE_PEER + "\n", " " + GUIDE_PEER])
def test_peer_id_with_whitespace_is_refused(text):
    # base58.b58decode stripped trailing whitespace; one peer has one name on the wire.
    with pytest.raises(PeerIdError):
        parse_peer_id(text)


@given(st.text(alphabet=BITCOIN_ALPHABET.decode(), max_size=80) | st.text(max_size=80))
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


# -- CIDv1 peer ids (libp2p peer-ids spec: implementations MUST parse them) ----------

SPEC_CID = "bafzbeie5745rpv2m6tjyuugywy4d5ewrqgqqhfnf445he3omzpjbx5xqxe"  # spec example
SPEC_CID_AS_BASE58 = "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"


def test_cid_peer_id_from_the_spec_parses_and_prints_base58():
    peer = parse_peer_id(SPEC_CID)
    assert peer == parse_peer_id(SPEC_CID_AS_BASE58)
    assert str(peer) == SPEC_CID_AS_BASE58
    assert peer.to_cid() == SPEC_CID


def test_ed25519_peer_id_round_trips_through_its_cid():
    pair = Keypair.generate()
    cid = pair.peer_id.to_cid()
    assert cid.startswith("bafz")
    peer = parse_peer_id(cid)
    assert peer == pair.peer_id and str(peer) == str(pair.peer_id)
    assert peer.verify(b"m", pair.sign(b"m"))


@pytest.mark.parametrize(
    "bad",
    [
        SPEC_CID.upper(),
        "b",
        SPEC_CID[:-1],
        SPEC_CID + "a",
        "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
        "b" + "1" * 10,
    ],
)
def test_bad_cid_peer_ids_are_parse_errors(bad):
    # Upper case, truncated, trailing garbage, a dag-pb CID (codec 0x70), bad alphabet.
    with pytest.raises(PeerIdError):
        parse_peer_id(bad)


@given(st.binary(max_size=60))
def test_any_cid_bytes_raise_only_parse_error(raw):
    import base64

    text = "b" + base64.b32encode(raw).decode().rstrip("=").lower()
    try:
        parse_peer_id(text)
    except ParseError:
        pass


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz234567=", max_size=90))
def test_any_base32_text_raises_only_parse_error(body):
    try:
        parse_peer_id("b" + body)
    except ParseError:
        pass


# -- the old 96-byte Ed25519 private key encoding (go-libp2p still reads it) ---------


def _old_96_byte_key(pair, redundant=None):
    from darkswap_trio.proto.identity import KEY_TYPE_ED25519, _encode_key_protobuf

    seed_and_public = pair.to_protobuf()[4:]
    assert len(seed_and_public) == 64
    return _encode_key_protobuf(
        KEY_TYPE_ED25519, seed_and_public + (redundant or seed_and_public[32:])
    )


def test_old_96_byte_private_key_is_read(tmp_path):
    pair = Keypair.generate()
    path = tmp_path / "go-libp2p.key"
    path.write_bytes(_old_96_byte_key(pair))
    assert load_or_create_keypair(path).peer_id == pair.peer_id


def test_old_96_byte_private_key_with_a_wrong_redundant_copy_is_refused():
    pair = Keypair.generate()
    other = Keypair.generate().to_protobuf()[4 + 32 :]
    with pytest.raises(PeerIdError, match="does not match"):
        Keypair.from_protobuf(_old_96_byte_key(pair, redundant=other))
