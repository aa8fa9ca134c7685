"""Send dead-lettered records again once the cause of the refusal is fixed.

python manage.py replay_dead_letters [--record <record_id>] [--code <platform code>]
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from regulators.models import OutboxRecord, RecordStatus
from regulators.services import record_replay


class Command(BaseCommand):
    help = "Replay dead-lettered regulator records (all, one, or those refused with a code)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--record", help="a record_id")
        parser.add_argument("--code", help="only records refused with this platform code")

    def handle(self, *args: Any, **options: Any) -> None:
        dead = OutboxRecord.objects.filter(status=RecordStatus.DEAD).order_by("id")
        if options["record"]:
            dead = dead.filter(record_id=options["record"])
        if options["code"]:
            dead = dead.filter(dead_code=options["code"])
        count = 0
        for record in dead:
            record_replay(record=record)
            count += 1
        self.stdout.write(f"replayed {count} record(s)")
