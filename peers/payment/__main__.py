"""``python -m peers.payment``: run the bundled payment peer under daphne.

    python -m peers.payment --port 8702 --db var/payment-peer.sqlite3 \\
        --merchant MCHID:SIGNING_SECRET:APIV3KEY [--merchant ...] \\
        --insurance PAASID:SECRET [--insurance ...] \\
        --gateway-key var/payment-gateway-key.pem [--retry-scale 1.0] \\
        [--admin-token T] [--public-url URL] [--bind 127.0.0.1] [--access-log]

The options become the ``PAYMENT_PEER_*`` environment the application reads. One line is
printed once the port listens; the notification sender starts then (daphne runs no ASGI
lifespan), so notifications left pending by a previous run resume without a request.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any


def parse_merchant(spec: str) -> dict[str, str]:
    """``MCHID:SIGNING_SECRET:APIV3KEY``; the key is the last 32 characters (so it may hold
    a colon), the secret what lies between."""
    mchid, _, rest = spec.partition(":")
    if not mchid or len(rest) < 34 or rest[-33] != ":":
        raise argparse.ArgumentTypeError(
            f"{spec!r}: expected MCHID:SIGNING_SECRET:APIV3KEY with a 32-character APIV3KEY"
        )
    secret, key = rest[:-33], rest[-32:]
    if not key.isascii():
        raise argparse.ArgumentTypeError(f"{spec!r}: the APIV3KEY must be ASCII")
    return {"mchid": mchid, "signing_secret": secret, "apiv3_key": key}


def parse_institution(spec: str) -> dict[str, str]:
    """``PAASID:SECRET`` (the secret may hold colons)."""
    paasid, _, secret = spec.partition(":")
    if not paasid or not secret:
        raise argparse.ArgumentTypeError(f"{spec!r}: expected PAASID:SECRET")
    return {"paasid": paasid, "secret": secret}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m peers.payment",
        description="The bundled payment gateway and insurance platform (a test and demo peer).",
    )
    parser.add_argument("--port", type=int, default=8702, help="TCP port (0: any free port)")
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--db", default=None, help="SQLite file (PAYMENT_PEER_DB)")
    parser.add_argument(
        "--merchant",
        action="append",
        type=parse_merchant,
        default=[],
        metavar="MCHID:SIGNING_SECRET:APIV3KEY",
        help="a merchant of the gateway (repeatable; else PAYMENT_PEER_MERCHANTS)",
    )
    parser.add_argument(
        "--insurance",
        action="append",
        type=parse_institution,
        default=[],
        metavar="PAASID:SECRET",
        help="an institution of the insurance platform (repeatable; else PAYMENT_PEER_INSURANCE)",
    )
    parser.add_argument(
        "--gateway-key",
        default=None,
        metavar="PATH",
        help="the gateway's PKCS#8 PEM ECDSA P-256 key, generated if missing",
    )
    parser.add_argument(
        "--retry-scale",
        type=float,
        default=None,
        help="multiplies the notification retry schedule (default 1.0; tests use 0.01)",
    )
    parser.add_argument("--admin-token", default=None, help="guards /_faults, /_reset, …")
    parser.add_argument(
        "--public-url",
        default=None,
        help="base of pay_url (default: the scheme and Host of the prepay request)",
    )
    parser.add_argument("--access-log", action="store_true", help="log each request to stdout")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.merchant:
        os.environ["PAYMENT_PEER_MERCHANTS"] = json.dumps(args.merchant)
    if args.insurance:
        os.environ["PAYMENT_PEER_INSURANCE"] = json.dumps(args.insurance)
    options = {
        "PAYMENT_PEER_DB": args.db,
        "PAYMENT_PEER_GATEWAY_KEY": args.gateway_key,
        "PAYMENT_PEER_RETRY_SCALE": None if args.retry_scale is None else str(args.retry_scale),
        "PAYMENT_PEER_ADMIN_TOKEN": args.admin_token,
        "PAYMENT_PEER_PUBLIC_URL": args.public_url,
    }
    for name, value in options.items():
        if value is not None:
            os.environ[name] = value

    from peers.payment.app import ConfigError, application

    try:
        peer = application.setup()
    except ConfigError as exc:
        parser.error(str(exc))

    # Importing daphne installs Twisted's asyncio reactor: do it only now.
    import asyncio

    from daphne.cli import CommandLineInterface
    from daphne.server import Server

    class AnnouncingServer(Server):
        def __init__(self, *positional: Any, **options: Any) -> None:
            options["ready_callable"] = self.announce
            super().__init__(*positional, **options)

        def announce(self) -> None:
            host, port = (
                self.listening_addresses[0] if self.listening_addresses else (args.bind, args.port)
            )
            config = peer.config
            print(
                f"payment peer ready on http://{host}:{port} (db {config.db_path}, "
                f"merchants {','.join(sorted(config.merchants)) or '-'}, "
                f"insurance {','.join(sorted(config.institutions)) or '-'}, "
                f"gateway key {config.gateway_key_path} serial {peer.key.serial_no})",
                flush=True,
            )
            # The event loop is set but not yet running: start the sender on its first turn.
            asyncio.get_event_loop().call_soon(peer.notifier.ensure_started)

    cli = CommandLineInterface()
    cli.server_class = AnnouncingServer
    daphne_args = ["--bind", args.bind, "--port", str(args.port)]
    daphne_args += ["--verbosity", "1"] if args.access_log else ["--verbosity", "0"]
    cli.run([*daphne_args, "peers.payment.app:application"])


if __name__ == "__main__":
    main()
