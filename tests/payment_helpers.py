"""The payment gateway and insurance platform as a real process (``python -m
peers.payment``) and the helpers that drive our payments against it. Nothing is mocked:
prepay, pay, notifications, refunds, settlements and bills go over HTTP; the peer posts
its notifications to our live server."""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from backend.organisations.models import Hospital
from payments.models import (
    Channel,
    GatewayConnection,
    InsuranceConnection,
    LedgerEntry,
    Order,
    OrderStatus,
    Refund,
    RefundStatus,
)
from payments.services import close_order_execute, payments_sweep, refund_execute
from tests.regulator_helpers import free_port, wait_until_healthy

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "payment-peer-admin"


class PaymentPeer:
    """A running peer with one merchant per gateway channel and one insurance client."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        key = ec.generate_private_key(ec.SECP256R1())
        self.key_file = tmp / "gateway-key.pem"
        self.key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self.public_pem = (
            key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
        self.merchants = {
            channel: {
                "mchid": f"19000001{n:02d}",
                "signing_secret": secrets.token_hex(16),
                "api_v3_key": secrets.token_hex(16),
            }
            for n, channel in enumerate((Channel.WECHAT, Channel.ALIPAY), start=1)
        }
        self.paasid, self.insurance_secret = "test-fsi", secrets.token_hex(16)
        self.log = (tmp / "payment-peer.log").open("wb")
        argv = [
            sys.executable,
            "-m",
            "peers.payment",
            "--port",
            str(self.port),
            "--db",
            str(tmp / "payment-peer.sqlite3"),
            "--gateway-key",
            str(self.key_file),
            "--insurance",
            f"{self.paasid}:{self.insurance_secret}",
            "--retry-scale",
            "0.01",
            "--admin-token",
            ADMIN_TOKEN,
        ]
        for merchant in self.merchants.values():
            argv += [
                "--merchant",
                f"{merchant['mchid']}:{merchant['signing_secret']}:{merchant['api_v3_key']}",
            ]
        self.proc = subprocess.Popen(
            argv, cwd=ROOT, env={**os.environ}, stdout=self.log, stderr=subprocess.STDOUT
        )
        self.http = httpx.Client(
            base_url=self.url, timeout=10, headers={"X-Admin-Token": ADMIN_TOKEN}
        )
        wait_until_healthy(self.proc, self.http, tmp / "payment-peer.log")

    def connect(self, hospital: Hospital, notify_base_url: str) -> None:
        for channel, merchant in self.merchants.items():
            GatewayConnection.objects.update_or_create(
                hospital=hospital,
                channel=channel,
                defaults={
                    "base_url": self.url,
                    "mchid": merchant["mchid"],
                    "appid": f"wx-{channel}",
                    "signing_secret": merchant["signing_secret"],
                    "api_v3_key": merchant["api_v3_key"],
                    "gateway_public_key_pem": self.public_pem,
                    "notify_base_url": notify_base_url,
                    "timeout_seconds": 5.0,
                    "enabled": True,
                },
            )
        InsuranceConnection.objects.update_or_create(
            hospital=hospital,
            defaults={
                "base_url": self.url,
                "paasid": self.paasid,
                "secret": self.insurance_secret,
                "fixmedins_code": "H33010600099",
                "self_pay_channel": Channel.WECHAT,
                "enabled": True,
            },
        )

    def faults(self, **faults: Any) -> None:
        response = self.http.post("/_faults", json=faults)
        assert response.status_code == 200, response.text

    def coverage(self, **rule: Any) -> None:
        response = self.http.post("/_coverage", json=rule)
        assert response.status_code == 200, response.text

    def reset(self) -> None:
        self.faults()
        assert self.http.post("/_reset").status_code == 200
        self.coverage(fund_ratio=0.7, account_ratio=0.5, account_balance=50000, uninsured=[])

    def pay(self, pay_url: str) -> dict[str, Any]:
        """What the patient does on the gateway's pay page."""
        response = httpx.post(pay_url, headers={"Accept": "application/json"}, timeout=10)
        assert response.status_code == 200, response.text
        return dict(response.json())

    def flush(self) -> None:
        assert self.http.post("/_flush").status_code == 200

    def notifications(self) -> list[dict[str, Any]]:
        data = self.http.get("/api/notifications").json()
        return list(data["results"] if isinstance(data, dict) else data)

    def stats(self) -> dict[str, Any]:
        return dict(self.http.get("/api/stats").json())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.http.close()
        self.log.close()


@contextlib.contextmanager
def payment_peer(tmp: Path) -> Iterator[PaymentPeer]:
    peer = PaymentPeer(tmp)
    try:
        yield peer
    finally:
        peer.stop()


def wait_for(condition: Any, *, timeout: float = 15.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def run_background() -> None:
    """What the Celery worker would do after commit: execute the refunds and the closes
    that were queued (the tests run no worker here; a separate test does)."""
    for _ in range(5):
        for refund in Refund.objects.exclude(status=RefundStatus.SUCCEEDED):
            if refund.status != RefundStatus.PROCESSING:
                refund_execute(refund_id=refund.pk)
        for order in Order.objects.filter(status=OrderStatus.CLOSED):
            close_order_execute(order_id=order.pk)
        if not Refund.objects.exclude(status__in=(RefundStatus.SUCCEEDED, RefundStatus.PROCESSING)):
            return


def sweep(settings: Any) -> dict[str, int]:
    """The beat sweep with no quiet period: query what was never notified."""
    settings.PAYMENT_QUERY_AFTER_SECONDS = 0
    return payments_sweep()


def ledger_balance(order: Order) -> dict[str, int]:
    """The ledger of one order, summed per kind."""
    out: dict[str, int] = {}
    for entry in LedgerEntry.objects.filter(order=order):
        out[entry.kind] = out.get(entry.kind, 0) + entry.amount
    return out
