"""``darkswap-relay`` subcommands other than serving: ``token``, ``keygen``, ``peer-id``,
``turn-credentials``.

Each takes the parsed arguments and returns the exit code (2 for bad input, with one
line on stderr).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from darkswap_trio import Keypair, PeerIdError, parse_peer_id

from ._auth import generate_jwt_keypair, issue_token
from ._config import ConfigError

PROG = "darkswap-relay"


def peer_id_main(args: argparse.Namespace) -> int:
    try:
        keypair = Keypair.from_protobuf(Path(args.key_file).read_bytes())
    except (OSError, ValueError) as exc:
        print(f"{PROG} peer-id: cannot load {args.key_file}: {exc}", file=sys.stderr)
        return 2
    print(keypair.peer_id)
    return 0


def token_main(args: argparse.Namespace) -> int:
    try:
        peer_id = str(parse_peer_id(args.peer_id))  # a CIDv1 id becomes the base58 `sub`
        material = Path(args.key_file).read_text()
        token = issue_token(
            peer_id,
            material,
            args.algorithm,
            args.ttl,
            now=time.time(),
            audience=args.audience,
            issuer=args.issuer,
        )
    except (PeerIdError, ConfigError, OSError) as exc:
        print(f"{PROG} token: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def _write_secret(path: Path, text: str, mode: int, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(path, flags, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text if text.endswith("\n") else text + "\n")


def keygen_main(args: argparse.Namespace) -> int:
    out = Path(args.out)
    private_pem, public_pem = generate_jwt_keypair(args.algorithm)
    try:
        out.mkdir(parents=True, exist_ok=True)
        if args.algorithm == "HS256":
            written = [out / "jwt_secret"]
            _write_secret(written[0], private_pem, 0o600, args.force)
        else:
            written = [out / "jwt_private.pem", out / "jwt_public.pem"]
            _write_secret(written[0], private_pem, 0o600, args.force)
            _write_secret(written[1], public_pem, 0o644, args.force)
    except FileExistsError as exc:
        print(f"{PROG} keygen: {exc.filename} exists (use --force)", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{PROG} keygen: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


def turn_credentials_main(args: argparse.Namespace) -> int:
    from darkswap_trio.proto.turn import rest_api_credentials

    from ._turn import read_turn_secret

    try:
        secret = read_turn_secret(args.secret_file)
        username, password = rest_api_credentials(secret, args.peer_id, args.ttl, time.time())
    except (ConfigError, ValueError) as exc:
        print(f"{PROG} turn-credentials: {exc}", file=sys.stderr)
        return 2
    print(f"username={username}")
    print(f"password={password}")
    return 0
