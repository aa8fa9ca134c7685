"""``GET /healthz``: real checks of the database, the channel layer and the broker."""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import Awaitable, Callable

from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET

logger = logging.getLogger(__name__)
TIMEOUT_SECONDS = 3.0


def _database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        if cursor.fetchone() != (1,):
            raise RuntimeError("SELECT 1 returned an unexpected row")


async def _channel_layer() -> None:
    layer = get_channel_layer()
    if layer is None:
        raise RuntimeError("no channel layer configured")
    channel = await layer.new_channel("healthz.")
    token = uuid.uuid4().hex
    await layer.send(channel, {"type": "healthz.ping", "token": token})
    message = await asyncio.wait_for(layer.receive(channel), TIMEOUT_SECONDS)
    if message.get("token") != token:
        raise RuntimeError("channel layer returned another message")


def _broker() -> None:
    from backend.celery import app

    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=int(TIMEOUT_SECONDS))
        if settings.CELERY_BROKER_URL.startswith("filesystem://"):
            options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
            if not os.access(options["data_folder_in"], os.W_OK):
                raise RuntimeError("the worker queue folder is not writable")


async def _run(check: Callable[[], Awaitable[None]]) -> str:
    try:
        await check()
    except Exception as exc:  # report, never raise: this is a health probe
        logger.warning("health check failed: %s", exc)
        return f"error: {type(exc).__name__}"
    return "ok"


@csrf_exempt
@require_GET
async def healthz(request: HttpRequest) -> JsonResponse:
    checks = {
        "database": await _run(sync_to_async(_database, thread_sensitive=True)),
        "channel_layer": await _run(_channel_layer),
        "broker": await _run(sync_to_async(_broker, thread_sensitive=False)),
    }
    healthy = all(value == "ok" for value in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "error", "checks": checks}, status=200 if healthy else 503
    )
