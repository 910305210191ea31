"""``darkswap-relay`` / ``python -m relay``: run the relay server, or issue JWTs and keys.

Serving prints exactly one line on stdout once every listener is bound::

    READY signaling=9002 stun=3478 metrics=9090 peer_id=12D3KooW... multiaddr=/ip4/...

(``none`` for a disabled service; ``multiaddr`` is the announce address when one is
configured; with ``--workers N`` the parent prints it once every worker is up, adding
``workers=N worker_metrics=P0,P1,...``); logs go to stderr, starting with one line
carrying the effective configuration. The first SIGINT/SIGTERM starts a graceful shutdown (stop accepting, tell
peers, drain within ``shutdown_grace``) and the process exits 0; a second signal aborts
at once (exit 1). SIGHUP re-reads ``--config`` (flags still override it) and applies
what can change live (limits, JWT keys), logging what changed and what was ignored.
Exit 2 means a bad command line or configuration, exit 1 a runtime failure (e.g. a port
already in use). ``--check-config`` prints the effective configuration as JSON and exits;
``peer-id --key-file PATH`` prints the PeerId of an identity key.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

import trio

from darkswap_trio import (
    Keypair,
    __version__,
    load_or_create_keypair,
)

from ._admission import raise_fd_limit
from ._config import (
    AUTH_MODES,
    JWT_ALGORITHMS,
    ConfigError,
    RelayConfig,
    announce_multiaddr,
    describe_config,
    load_config,
)
from ._logging import configure_logging
from ._worker_slot import WorkerSlot
from ._workers import apply_worker_slot, exit_with_parent, run_workers
from .cluster._mesh import MESH_TLS_HELP, check_mesh_files

__all__ = ["build_parser", "main"]

logger = logging.getLogger("relay.main")

PROG = "darkswap-relay"
# After shutdown(grace) returns, how long serve_relay may take to return before we cancel.
SHUTDOWN_MARGIN = 2.0
# Allocations between young collections here (default 700; never set by serve_relay): a
# registration storm's survivors were scanned again and again while promoted, GC ~0.05-0.08
# ms per registration at 2,000-3,000 peers, ~0.015 with 20,000 (~1 ms per collection).
RELAY_GC_THRESHOLD = 20_000
_DISABLED = -1  # --stun-port/--metrics-port value meaning "do not run this service"


def _port_or_disabled(text: str) -> int:
    if text.strip().lower() in ("none", "off", "disabled", "-1"):
        return _DISABLED
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number or 'none': {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, or -1/none: {value}")
    return value


def _port(text: str) -> int:
    value = _port_or_disabled(text)
    if value == _DISABLED:
        raise argparse.ArgumentTypeError("the signaling port cannot be disabled")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a non-negative number of seconds: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="DarkSwap relay: WebSocket signaling, circuit relay and STUN on trio. "
        "Without a subcommand, runs the server; command-line flags override the config file.",
    )
    add = parser.add_argument
    add("--version", action="version", version=f"{PROG} {__version__}")
    add(
        "--check-config",
        action="store_true",
        help="Validate the configuration (file and flags), print the effective settings "
        "as JSON on stdout and exit (0 if valid, 2 if not).",
    )
    add("--config", metavar="PATH", help="TOML configuration file (see deploy/relay.toml).")
    add(
        "--host",
        help="Address to listen on for signaling and STUN (default 0.0.0.0; '::' for dual-stack).",
    )
    add(
        "--announce",
        metavar="ADDR",
        help="Address peers should dial, printed in READY: a multiaddr such as "
        "/dns4/relay.example/tcp/443/wss (/p2p/<id> is added) or HOST[:PORT]. "
        "Default: derived from --host and the bound port.",
    )
    add(
        "--metrics-host",
        metavar="HOST",
        help="Address for /metrics and /healthz (default 127.0.0.1: not public).",
    )
    add(
        "--port", type=_port, help="WebSocket signaling TCP port (default 9002; 0 = any free port)."
    )
    add(
        "--stun-port",
        type=_port_or_disabled,
        metavar="PORT",
        help="STUN binding service UDP port (default 3478; 0 = any free port; -1 or 'none' disables).",
    )
    add(
        "--metrics-port",
        type=_port_or_disabled,
        metavar="PORT",
        help="HTTP port for /metrics and /healthz (default 9090; 0 = any free port; "
        "-1 or 'none' disables).",
    )
    add(
        "--key-file",
        metavar="PATH",
        help="Relay identity key file (libp2p Ed25519 protobuf); "
        "created if missing. Default: an ephemeral identity.",
    )
    add(
        "--tls-cert",
        metavar="PATH",
        help="TLS certificate chain (PEM) to serve wss:// (needs --tls-key).",
    )
    add("--tls-key", metavar="PATH", help="TLS private key (PEM) matching --tls-cert.")
    add(
        "--auth",
        choices=AUTH_MODES,
        help="How peers prove their identity on Register: "
        "'signature' (sign a server nonce with the PeerId key; default), 'jwt' (bearer token), "
        "'open' (trust the claimed id; legacy clients, testing only).",
    )
    add(
        "--jwt-algorithm",
        choices=JWT_ALGORITHMS,
        help="JWT signature algorithm accepted (pinned; default EdDSA).",
    )
    add(
        "--jwt-key-file",
        metavar="PATH",
        help="JWT verification key: PEM public key (EdDSA/ES256) or shared-secret file (HS256).",
    )
    add("--jwt-audience", metavar="AUD", help="Required 'aud' claim of JWTs (unchecked if unset).")
    add("--jwt-issuer", metavar="ISS", help="Required 'iss' claim of JWTs (unchecked if unset).")
    add(
        "--shutdown-grace",
        type=_seconds,
        metavar="SECONDS",
        help="On SIGINT/SIGTERM, how long to let sessions and circuits drain (default 5).",
    )
    turn = parser.add_argument_group(
        'TURN (RFC 8656, on the STUN port over UDP and TCP; see README "TURN")'
    )
    turn.add_argument(
        "--turn",
        action="store_true",
        default=None,
        help="Serve TURN on the STUN port (UDP and TCP); needs --turn-secret-file.",
    )
    turn.add_argument(
        "--turn-realm",
        metavar="REALM",
        help="TURN realm of the long-term credentials (default darkswap).",
    )
    turn.add_argument(
        "--turn-secret-file",
        metavar="PATH",
        help="Shared secret of the TURN REST API credentials (username '<unix-expiry>:<peer-id>', "
        "password base64(HMAC-SHA1(secret, username))); see 'turn-credentials'.",
    )
    turn.add_argument(
        "--turn-relay-address",
        metavar="IPV4",
        help="Address relayed sockets are bound on and announced with "
        "(default: --host; required when --host is a wildcard).",
    )
    turn.add_argument(
        "--turn-tls-port",
        type=int,
        metavar="PORT",
        help="Also serve TURN over TLS (turns:) on this TCP port with --tls-cert/--tls-key "
        "(0 = any free port; default off).",
    )
    turn.add_argument(
        "--turn-allow-loopback-peers",
        action="store_true",
        default=None,
        help="Let TURN clients reach peers on 127.0.0.0/8 and ::1. Tests and labs only: "
        "it exposes the relay host's loopback services.",
    )
    mesh = parser.add_argument_group(
        'Relay cluster mesh links (docs/PROTOCOL.md section 15; README "Cross-node circuits")'
    )
    mesh.add_argument(
        "--mesh-secret-file",
        metavar="PATH",
        help="Cluster secret every node holds: mesh links from nodes without it are refused.",
    )
    mesh.add_argument(
        "--mesh-static-directory",
        metavar="PATH",
        help="JSON table of the cluster's nodes and of the node each peer is on "
        "(a cluster without the Redis directory: tests, small fixed setups).",
    )
    mesh.add_argument("--mesh-tls", action="store_true", default=None, help=MESH_TLS_HELP)
    cluster = parser.add_argument_group(
        'Relay cluster (nodes sharing one Redis for presence and signaling; see README "Relay cluster")'
    )
    cluster.add_argument(
        "--cluster-redis",
        metavar="URL",
        help="Join a cluster through this Redis: redis://HOST:PORT[/DB], rediss://... or "
        "unix:///PATH. Default: no cluster (a single relay, no Redis).",
    )
    cluster.add_argument(
        "--node-id",
        metavar="ID",
        help="This node's unique id in the cluster (A-Z a-z 0-9 . _ -; default: the relay's PeerId).",
    )
    cluster.add_argument(
        "--advertise",
        metavar="HOST:PORT",
        help="Where the other nodes reach this one (mesh links). Default: --host and the bound port.",
    )
    cluster.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="Run N relay processes sharing the signaling port (SO_REUSEPORT), each a node "
        "of the cluster, to use N cores (needs --cluster-redis). Worker i is node "
        "<node-id>-w<i>, serves mesh links on the --advertise port + i (any free port "
        "without --advertise) and /metrics on --metrics-port + i; STUN/TURN run on "
        'worker 0 only. Default 1 (README "Workers").',
    )
    # Set by the --workers parent on each worker's command line (relay._workers).
    cluster.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    cluster.add_argument("--worker-mesh-port", type=int, default=0, help=argparse.SUPPRESS)
    add("--log-format", choices=("text", "json"), help="Log format on stderr (default text).")
    add(
        "--log-level",
        metavar="LEVEL",
        help="Log level: DEBUG, INFO, WARNING, ERROR (default INFO).",
    )

    sub = parser.add_subparsers(
        dest="command",
        metavar="{token,keygen,peer-id,turn-credentials}",
        help="Other commands (none: run the server).",
    )
    peer_id = sub.add_parser(
        "peer-id",
        help="Print the PeerId of a relay identity key file.",
        description="Print the PeerId of a relay identity key file (the /p2p/ part of "
        "its multiaddr). The file is not created if missing.",
    )
    peer_id.add_argument("--key-file", required=True, metavar="PATH", help="Identity key file.")
    token = sub.add_parser(
        "token",
        help="Print a JWT for a peer id (signed with a private key or shared secret).",
        description="Print a JWT for a peer id.",
    )
    token.add_argument("--peer-id", required=True, help="The peer's PeerId (the token's 'sub').")
    token.add_argument(
        "--key-file",
        required=True,
        metavar="PATH",
        help="PEM private key (EdDSA/ES256) or shared-secret file (HS256).",
    )
    token.add_argument(
        "--algorithm",
        "--jwt-algorithm",
        dest="algorithm",
        default="EdDSA",
        choices=JWT_ALGORITHMS,
        help="Signature algorithm (default EdDSA).",
    )
    token.add_argument(
        "--ttl",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="Lifetime of the token in seconds (default 3600).",
    )
    token.add_argument("--audience", metavar="AUD", help="'aud' claim to include.")
    token.add_argument("--issuer", metavar="ISS", help="'iss' claim to include.")

    keygen = sub.add_parser(
        "keygen",
        help="Write a new JWT signing keypair to a directory.",
        description="Write a new JWT signing keypair: jwt_private.pem and "
        "jwt_public.pem (EdDSA/ES256) or jwt_secret (HS256).",
    )
    keygen.add_argument(
        "--jwt-algorithm",
        "--algorithm",
        dest="algorithm",
        default="EdDSA",
        choices=JWT_ALGORITHMS,
        help="Algorithm of the keypair (default EdDSA).",
    )
    keygen.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="Directory to write the key files into (created if missing).",
    )
    keygen.add_argument("--force", action="store_true", help="Overwrite existing key files.")

    creds = sub.add_parser(
        "turn-credentials",
        help="Print TURN credentials (TURN REST API form) for a peer.",
        description="Print a TURN username ('<unix-expiry>:<peer-id>') and password "
        "(base64(HMAC-SHA1(secret, username))) as two lines, username=... and password=..., "
        "for any TURN client (browsers, aiortc, coturn's tools).",
    )
    creds.add_argument(
        "--secret-file", required=True, metavar="PATH", help="The relay's turn.secret_file."
    )
    creds.add_argument("--peer-id", required=True, help="Who the credentials are for.")
    creds.add_argument(
        "--ttl",
        type=float,
        default=86400.0,
        metavar="SECONDS",
        help="How long the credentials are valid (default 86400).",
    )
    return parser


def _config_from_args(args: argparse.Namespace) -> RelayConfig:
    overrides: dict[str, Any] = {
        "host": args.host,
        "port": args.port,
        "announce": args.announce,
        "metrics_host": args.metrics_host,
        "stun_port": args.stun_port,
        "metrics_port": args.metrics_port,
        "key_file": args.key_file,
        "tls_cert": args.tls_cert,
        "tls_key": args.tls_key,
        "shutdown_grace": args.shutdown_grace,
        "log_format": args.log_format,
        "log_level": args.log_level,
        "auth_mode": args.auth,
        "auth_jwt_algorithm": args.jwt_algorithm,
        "auth_jwt_key_file": args.jwt_key_file,
        "auth_jwt_audience": args.jwt_audience,
        "auth_jwt_issuer": args.jwt_issuer,
        "turn_enabled": args.turn,
        "turn_realm": args.turn_realm,
        "turn_secret_file": args.turn_secret_file,
        "turn_relay_address": args.turn_relay_address,
        "turn_allow_loopback_peers": args.turn_allow_loopback_peers,
        "turn_tls_port": args.turn_tls_port,
        "mesh_secret_file": args.mesh_secret_file,
        "mesh_static_directory": args.mesh_static_directory,
        "mesh_tls": args.mesh_tls,
        "cluster_redis_url": args.cluster_redis,
        "cluster_node_id": args.node_id,
        "cluster_advertise": args.advertise,
        "cluster_workers": args.workers,
    }
    disable = [name for name in ("stun_port", "metrics_port") if overrides[name] == _DISABLED]
    for name in disable:
        overrides[name] = None  # load_config skips None overrides; disabled below
    config = load_config(args.config, **overrides)
    for name in disable:
        setattr(config, name, None)
    if args.worker_index is not None:
        apply_worker_slot(config, args.worker_index)
    config.validate()
    if config.tls_cert is not None and config.tls_key is not None:
        # Fail now, with exit 2 and the file named, rather than deep inside serve_relay.
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                config.tls_cert, config.tls_key
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load tls_cert {config.tls_cert!r} / tls_key {config.tls_key!r}: {exc}"
            ) from exc
    if config.auth.mode == "jwt":
        # Fail now, with exit 2, rather than on the first Register (PyJWT loads only here).
        from ._auth import JwtValidator

        JwtValidator.from_config(config)
    if config.turn.enabled and config.turn.secret_file is not None:
        from ._turn import read_turn_secret  # the TURN service's modules load only with TURN

        read_turn_secret(config.turn.secret_file)  # exit 2 now, not at bind time
    check_mesh_files(config)  # the same for the mesh's secret and static directory
    if not isinstance(logging.getLevelName(config.log_level.upper()), int):
        raise ConfigError(f"log_level: unknown level {config.log_level!r}")
    return config


def _ready_line(server: Any) -> str:
    def port(value: int | None) -> str:
        return "none" if value is None else str(value)

    return (
        f"READY signaling={server.signaling_port} stun={port(server.stun_port)} "
        f"metrics={port(server.metrics_port)} peer_id={server.peer_id} "
        f"multiaddr={server.multiaddr}"
    )


def _reload(server: Any, args: argparse.Namespace) -> None:
    """SIGHUP: re-read the configuration and apply what can change live; never fatal."""
    try:
        new = _config_from_args(args)
        applied, ignored = server.reload(new)
    except ConfigError as exc:
        logger.error("reload failed, configuration unchanged: %s", exc)
        return
    if not applied and not ignored:
        logger.info("reload: no change")
        return
    if applied:
        logger.info(
            "reload applied: %s",
            ", ".join(applied),
            extra={"changed": {key: describe_config(new).get(key) for key in applied}},
        )
    if ignored:
        logger.warning("reload ignored (needs a restart): %s", ", ".join(ignored))


async def _serve(
    config: RelayConfig,
    keypair: Keypair | None,
    args: argparse.Namespace | None = None,
    worker: WorkerSlot | None = None,
) -> int:
    from ._server import serve_relay  # imported late: the CLI's other commands don't need it

    forced = False
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:

            async def run_server(task_status: trio.TaskStatus[Any]) -> None:
                await serve_relay(config, keypair=keypair, worker=worker, task_status=task_status)
                nursery.cancel_scope.cancel()  # the server is done: stop watching signals

            async def shut_down(server: Any) -> None:
                await server.shutdown(config.shutdown_grace)
                # serve_relay returns once shut down; don't hang if it doesn't.
                nursery.cancel_scope.deadline = trio.current_time() + SHUTDOWN_MARGIN

            server = await nursery.start(run_server)
            if worker is not None:
                nursery.start_soon(exit_with_parent)
            sys.stdout.write(_ready_line(server) + "\n")
            sys.stdout.flush()
            logger.info("relay ready", extra={"peer_id": str(server.peer_id)})
            if config.announce is None and config.host in ("0.0.0.0", "::", ""):
                logger.warning(
                    "READY gives a loopback multiaddr (host %s): set --announce to the "
                    "address remote peers dial",
                    config.host,
                )
            shutting_down = False
            async for signum in signals:
                name = signal.Signals(signum).name
                if signum == signal.SIGHUP:
                    if args is not None and not shutting_down:
                        _reload(server, args)
                    continue
                if not shutting_down:
                    logger.info(
                        "shutting down", extra={"signal": name, "grace": config.shutdown_grace}
                    )
                    shutting_down = True
                    nursery.start_soon(shut_down, server)
                else:
                    logger.warning("second signal: aborting", extra={"signal": name})
                    forced = True
                    nursery.cancel_scope.cancel()
                    break
    return 1 if forced else 0


def _serve_main(args: argparse.Namespace, argv: list[str]) -> int:
    try:
        config = _config_from_args(args)
    except ConfigError as exc:
        print(f"{PROG}: configuration error: {exc}", file=sys.stderr)
        return 2
    if args.check_config:
        effective = describe_config(config)
        if config.key_file is not None and Path(config.key_file).exists():
            try:  # the identity it would serve with (a missing file would be created)
                key = Keypair.from_protobuf(Path(config.key_file).read_bytes())
            except (OSError, ValueError) as exc:
                print(f"{PROG}: cannot load key_file: {exc}", file=sys.stderr)
                return 2
            effective["peer_id"] = str(key.peer_id)
        print(json.dumps(effective, indent=2, sort_keys=True))
        return 0
    configure_logging(config.log_format, config.log_level)
    if config.cluster.workers > 1:
        logger.info("starting %s %s with %d workers", PROG, __version__, config.cluster.workers)
        try:
            return trio.run(run_workers, config, argv)
        except OSError as exc:
            logger.error("relay failed: %s", exc)
            return 1
    # A relay past its fd limit fails every accept, honest peers and /metrics alike:
    # raise the soft limit to the hard one, and keep max_sessions below it.
    raise_fd_limit(config.limits)
    try:
        keypair = load_or_create_keypair(config.key_file) if config.key_file else Keypair.generate()
    except (OSError, ValueError) as exc:
        print(f"{PROG}: cannot load key_file: {exc}", file=sys.stderr)
        return 2
    if config.announce is not None:
        try:  # now that the identity is known: an announce naming another peer is refused
            announce_multiaddr(config.announce, str(keypair.peer_id), config.port, False)
        except ConfigError as exc:
            print(f"{PROG}: configuration error: {exc}", file=sys.stderr)
            return 2
    logger.info("starting %s %s", PROG, __version__, extra={"config": describe_config(config)})
    try:
        # Everything loaded so far (modules, config, keys) lives as long as the process:
        # move it out of the collector's sight, so full collections, whose cost grows
        # with the heap, cost less per registration (measured: 0.43 -> 0.34 ms CPU at
        # 5,000 peers). Only here, in the standalone server: in a library call this
        # would change collection for the caller's whole process.
        gc.collect()
        gc.freeze()
        gc.set_threshold(RELAY_GC_THRESHOLD, 10, 10)
        worker = None
        if args.worker_index is not None:
            worker = WorkerSlot(args.worker_index, args.worker_mesh_port)
        return trio.run(_serve, config, keypair, args, worker)
    except Exception as exc:  # incl. ExceptionGroup from the nursery, e.g. port in use
        leaves = _leaf_exceptions(exc)
        if all(isinstance(leaf, OSError) for leaf in leaves):
            # Operational (port in use, missing cert file...): one line, traceback at DEBUG.
            logger.error("relay failed: %s", "; ".join(str(leaf) for leaf in leaves))
            logger.debug("details", exc_info=exc)
        else:
            logger.error("relay failed: %s", exc, exc_info=exc)
        return 1


def _leaf_exceptions(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaf_exceptions(sub)]
    return [exc]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``darkswap-relay``; returns the process exit code."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is not None:  # loaded only when used: a relay starts sooner
        from . import _commands

        command = getattr(_commands, args.command.replace("-", "_") + "_main")  # peer_id_main...
        return int(command(args))
    return _serve_main(args, argv)


if __name__ == "__main__":
    sys.exit(main())
