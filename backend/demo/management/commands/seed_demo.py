from __future__ import annotations

import json
from importlib import import_module
from importlib.util import find_spec
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from backend.demo.seeding import demo_credentials, seed_kernel


class Command(BaseCommand):
    help = (
        "Create the demo province, hospital, staff, pharmacy and patients (idempotent) and "
        "print one JSON object with every login, an API token per role and TOTP secrets."
    )

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "--force",
            action="store_true",
            help="seed even outside DEMO_MODE (never on a live hospital)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEMO_MODE and not options["force"]:
            raise CommandError("seed_demo creates demo accounts: run it with DEMO_MODE=1.")
        context = seed_kernel()
        for config in apps.get_app_configs():
            module_name = f"{config.name}.demo_seed"
            if find_spec(module_name) is not None:
                seeded = import_module(module_name).seed(context) or {}
                # Each app may bring a peer: the "peers" maps are merged, not replaced.
                peers = {**context.output.get("peers", {}), **seeded.pop("peers", {})}
                context.output.update(seeded)
                if peers:
                    context.output["peers"] = peers
        output = demo_credentials(context)
        output.update(context.output)
        self.stdout.write(json.dumps(output, ensure_ascii=False, indent=2))
