"""Demo data of payments: consultation fees, the hospital's merchant accounts at the two
gateways and its insurance connection, all pointing at the bundled payment peer that
``run_demo`` starts (``peers/payment``). The gateway's signing key is generated once
under ``var/`` (never in git) and its public key pinned here, as onboarding would."""

from __future__ import annotations

import hashlib
import hmac
import os
import sys
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.conf import settings

from backend.demo.seeding import DemoContext
from payments.models import Channel, GatewayConnection, InsuranceConnection

#: Listed fees of the demo departments (fen): 20 yuan, and 30 for the specialist clinic.
FEES = {"03": 2000, "0301": 3000}


def _derived(label: str) -> str:
    """Stable per installation (derived from its own secret key), never in git."""
    return hmac.new(settings.SECRET_KEY.encode(), label.encode(), hashlib.sha256).hexdigest()


def gateway_public_key(key_file: Path) -> str:
    """The peer's key (created here first if missing, as the peer would) → public PEM."""
    if not key_file.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        key_file.parent.mkdir(parents=True, exist_ok=True)
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_file.chmod(0o600)
    private = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def seed(context: DemoContext) -> dict[str, Any]:
    for code, fee in FEES.items():
        department = context.departments.get(code)
        if department is not None and department.consultation_fee != fee:
            department.consultation_fee = fee
            department.save(update_fields=["consultation_fee"])
    port = settings.PAYMENT_PEER_PORT
    url = f"http://127.0.0.1:{port}"
    key_file = Path(settings.VAR_DIR) / "payment-gateway-key.pem"
    public_pem = gateway_public_key(key_file)
    notify_base = f"http://127.0.0.1:{os.environ.get('DEMO_PORT', '8000')}"
    merchants = []
    for n, channel in enumerate((Channel.WECHAT, Channel.ALIPAY), start=1):
        mchid = f"19000000{n:02d}"
        secret, api_key = _derived(f"demo-{channel}-signing"), _derived(f"demo-{channel}-v3")[:32]
        GatewayConnection.objects.update_or_create(
            hospital=context.hospital,
            channel=channel,
            defaults={
                "base_url": url,
                "mchid": mchid,
                "appid": f"wxdemo{n:02d}",
                "signing_secret": secret,
                "api_v3_key": api_key,
                "gateway_public_key_pem": public_pem,
                "notify_base_url": notify_base,
                "enabled": True,
            },
        )
        merchants += ["--merchant", f"{mchid}:{secret}:{api_key}"]
    paasid, insurance_secret = "demo-fsi", _derived("demo-insurance")
    InsuranceConnection.objects.update_or_create(
        hospital=context.hospital,
        defaults={
            "base_url": url,
            "paasid": paasid,
            "secret": insurance_secret,
            "fixmedins_code": "H33010600001",
            "self_pay_channel": Channel.WECHAT,
            "enabled": True,
        },
    )
    return {
        "peers": {
            "payment": {
                "url": url,
                "argv": [
                    sys.executable,
                    "-m",
                    "peers.payment",
                    "--port",
                    str(port),
                    "--db",
                    str(Path(settings.VAR_DIR) / "payment-peer.sqlite3"),
                    "--gateway-key",
                    str(key_file),
                    "--insurance",
                    f"{paasid}:{insurance_secret}",
                    *merchants,
                ],
            }
        }
    }
