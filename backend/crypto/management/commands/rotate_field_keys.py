from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from backend.crypto.keyring import keyring
from backend.crypto.rotation import field_keys_rotate


class Command(BaseCommand):
    help = (
        "Re-encrypt every encrypted column under the active key (the first entry of "
        "FIELD_ENCRYPTION_KEYS). Run after prepending a new key; then drop the old one."
    )

    def handle(self, *args: Any, **options: Any) -> None:
        for result in field_keys_rotate():
            self.stdout.write(f"{result.table}.{result.column}: {result.rewritten} rewritten")
        self.stdout.write(self.style.SUCCESS(f"all values now under key {keyring().active_id!r}"))
