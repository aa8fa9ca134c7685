"""``python -m peers.regulator``: run the bundled provincial platform under daphne.

    python -m peers.regulator --port 8701 --db var/regulator-peer.sqlite3 \\
        --app APP_ID:SECRET[:SM4KEYHEX][:HOSPITAL_CODE] [--app ...] [--bind 127.0.0.1]

The options become the ``PEER_*`` environment the application reads; ``--app`` may be
left out when ``PEER_APPS`` is already set. One line is printed once the port listens.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any


def parse_app(spec: str) -> dict[str, str]:
    """``APP_ID:SECRET[:SM4KEYHEX][:HOSPITAL_CODE]``. With three parts the third is the
    SM4 key if it is 32 hex digits, else the hospital code; ``ID:SECRET::H001`` gives a
    hospital code without a key."""
    parts = spec.split(":")
    if len(parts) < 2 or len(parts) > 4 or not parts[0] or not parts[1]:
        raise argparse.ArgumentTypeError(
            f"{spec!r}: expected APP_ID:SECRET[:SM4KEYHEX][:HOSPITAL_CODE]"
        )
    app = {"app_id": parts[0], "app_secret": parts[1]}
    rest = parts[2:]
    if len(rest) == 1:
        rest = [rest[0], ""] if _looks_like_key(rest[0]) else ["", rest[0]]
    if rest:
        sm4_key, hospital_code = rest
        if sm4_key and not _looks_like_key(sm4_key):
            raise argparse.ArgumentTypeError(f"{spec!r}: the SM4 key must be 32 hex digits")
        if sm4_key:
            app["sm4_key"] = sm4_key
        if hospital_code:
            app["hospital_code"] = hospital_code
    return app


def _looks_like_key(text: str) -> bool:
    try:
        return len(bytes.fromhex(text)) == 16 and len(text) == 32
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m peers.regulator",
        description="The bundled provincial regulatory platform (a test and demo peer).",
    )
    parser.add_argument("--port", type=int, default=8701, help="TCP port (0: any free port)")
    parser.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--db", default=None, help="SQLite file (PEER_DB)")
    parser.add_argument(
        "--app",
        action="append",
        type=parse_app,
        default=[],
        metavar="APP_ID:SECRET[:SM4KEYHEX][:HOSPITAL_CODE]",
        help="an app the platform issued credentials to (repeatable; else PEER_APPS)",
    )
    parser.add_argument(
        "--timestamp-window", type=float, default=None, help="seconds (PEER_TIMESTAMP_WINDOW)"
    )
    parser.add_argument("--admin-token", default=None, help="guards /_faults and /_reset")
    parser.add_argument("--access-log", action="store_true", help="log each request to stdout")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.app:
        os.environ["PEER_APPS"] = json.dumps(args.app)
    if args.db:
        os.environ["PEER_DB"] = args.db
    if args.timestamp_window is not None:
        os.environ["PEER_TIMESTAMP_WINDOW"] = str(args.timestamp_window)
    if args.admin_token is not None:
        os.environ["PEER_ADMIN_TOKEN"] = args.admin_token

    from peers.regulator.app import ConfigError, application

    try:
        peer = application.setup()
    except ConfigError as exc:
        parser.error(str(exc))

    # Importing daphne installs Twisted's asyncio reactor: do it only now.
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
            apps = ",".join(sorted(peer.config.apps))
            print(
                f"regulator peer ready on http://{host}:{port} "
                f"(db {peer.config.db_path}, apps {apps})",
                flush=True,
            )

    cli = CommandLineInterface()
    cli.server_class = AnnouncingServer
    daphne_args = ["--bind", args.bind, "--port", str(args.port)]
    daphne_args += ["--verbosity", "1"] if args.access_log else ["--verbosity", "0"]
    cli.run([*daphne_args, "peers.regulator.app:application"])


if __name__ == "__main__":
    main()
