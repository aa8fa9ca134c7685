"""Demo data of regulator reporting: the demo province's platform connection, pointing
at the bundled platform peer that ``run_demo`` starts (``peers/regulator``), and the
hospital's filings. The peer's command line is part of the seed's output, so the demo
runner starts it with the same credentials."""

from __future__ import annotations

import hashlib
import hmac
import sys
from pathlib import Path
from typing import Any

from django.conf import settings

from backend.demo.seeding import DemoContext
from regulators.filings import filings_report
from regulators.models import Adapter, OutboxRecord, PlatformConnection
from regulators.services import hospital_code


def _secret() -> str:
    """Stable per installation (derived from its own secret key), never in git."""
    return hmac.new(
        settings.SECRET_KEY.encode(), b"demo-regulator-platform", hashlib.sha256
    ).hexdigest()


def seed(context: DemoContext) -> dict[str, Any]:
    port = settings.REGULATOR_PEER_PORT
    url = f"http://127.0.0.1:{port}"
    app_id = f"demo-{context.province.code}"
    PlatformConnection.objects.update_or_create(
        province=context.province,
        defaults={
            "adapter": Adapter.JSON_HMAC,
            "base_url": url,
            "app_id": app_id,
            "app_secret": _secret(),
            "enabled": True,
        },
    )
    if not OutboxRecord.objects.filter(
        hospital=context.hospital, record_type="filing.institution"
    ).exists():
        filings_report(hospital=context.hospital)
    code = hospital_code(context.hospital)
    return {
        "peers": {
            "regulator": {
                "url": url,
                "argv": [
                    sys.executable,
                    "-m",
                    "peers.regulator",
                    "--port",
                    str(port),
                    "--db",
                    str(Path(settings.VAR_DIR) / "regulator-peer.sqlite3"),
                    "--app",
                    f"{app_id}:{_secret()}::{code}",
                ],
            }
        }
    }
