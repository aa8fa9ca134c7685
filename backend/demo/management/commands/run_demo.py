"""Start the whole system on the embedded default: migrate, seed, then Daphne (HTTP and
WebSockets) and a Celery worker with embedded beat, supervised until Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Run the demo: Daphne, the worker (with beat) and the bundled peers, with demo data."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default=os.environ.get("DEMO_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, default=int(os.environ.get("DEMO_PORT", "8000")))

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEMO_MODE:
            raise CommandError("run_demo is for the demo: set DEMO_MODE=1.")
        call_command("migrate", interactive=False, verbosity=0)
        call_command("collectstatic", interactive=False, verbosity=0)
        seeded = StringIO()
        call_command("seed_demo", stdout=seeded)
        accounts_file = Path(settings.VAR_DIR) / "demo-accounts.json"
        accounts_file.write_text(seeded.getvalue())
        accounts_file.chmod(0o600)

        host, port = options["host"], options["port"]
        python = sys.executable
        env = {**os.environ, "DEMO_MODE": "1"}
        # The bundled peers (the provincial platform, the payment gateway) are started
        # with the command lines their apps' demo seeds give (the kernel knows no app).
        peers = json.loads(seeded.getvalue()).get("peers", {})
        procs = {
            f"{name} peer": subprocess.Popen(peer["argv"], env=env)  # noqa: S603
            for name, peer in peers.items()
        }
        procs |= {
            "worker": subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
                [
                    python,
                    "-m",
                    "celery",
                    "-A",
                    "backend",
                    "worker",
                    "-B",
                    "-l",
                    "info",
                    "--pool",
                    "solo",
                    "-s",
                    str(Path(settings.VAR_DIR) / "celerybeat-schedule"),
                ],
                env=env,
            ),
            "web": subprocess.Popen(  # noqa: S603
                [python, "-m", "daphne", "-b", host, "-p", str(port), "backend.asgi:application"],
                env=env,
            ),
        }
        base = f"http://{host}:{port}"
        self.stdout.write(
            self.style.SUCCESS(
                "\nInternet hospital demo is starting:\n"
                f"  API docs (Swagger):  {base}/api/docs/\n"
                f"  API docs (ReDoc):    {base}/api/redoc/\n"
                f"  Health:              {base}/healthz\n"
                f"  Console (doctors):   {base}/console/   (TOTP codes: the file below)\n"
                f"  Admin:               {base}/admin/   (user 'admin'; password: file below)\n"
                f"  Console WebSocket:   ws://{host}:{port}/ws/console/\n"
                + "".join(
                    f"  {name.capitalize() + ' peer:':<21}{peer['url']}/\n"
                    for name, peer in peers.items()
                )
                + f"  Demo logins, API tokens and TOTP secrets: {accounts_file}\n"
                "Press Ctrl-C to stop.\n"
            )
        )
        stopping = False

        def stop(signum: int, frame: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            while not stopping:
                for name, proc in procs.items():
                    if proc.poll() is not None:
                        raise CommandError(f"the {name} process exited with {proc.returncode}")
                time.sleep(0.5)
        finally:
            for proc in procs.values():
                if proc.poll() is None:
                    proc.terminate()
            for proc in procs.values():
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
