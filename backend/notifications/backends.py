"""Push backends: one interface, chosen by ``PUSH_BACKEND``.

``LoggingPushBackend`` (demo) writes the notification to the log. ``HttpPushBackend``
posts JSON to a push gateway (``PUSH_HTTP_URL``, bearer ``PUSH_HTTP_TOKEN``) that fans
out to the vendors' services (APNs, FCM, the Chinese Android vendors' channels).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache
from typing import Any, Protocol

import httpx
from django.conf import settings
from django.utils.module_loading import import_string

logger = logging.getLogger("backend.notifications")


class PushDeliveryError(Exception):
    """A temporary failure: the task retries."""


class DeviceGone(Exception):
    """The gateway says the token is no longer valid: the device row is removed."""


@dataclass(frozen=True)
class PushMessage:
    title: str
    body: str
    data: dict[str, Any]


class PushBackend(Protocol):
    def send(self, *, platform: str, token: str, message: PushMessage) -> None: ...


class LoggingPushBackend:
    def send(self, *, platform: str, token: str, message: PushMessage) -> None:
        logger.info(
            "push to %s:%s… %s — %s %s",
            platform,
            token[:8],
            message.title,
            message.body,
            message.data,
        )


class HttpPushBackend:
    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        self.url = url or settings.PUSH_HTTP_URL
        self.token = token or settings.PUSH_HTTP_TOKEN
        if not self.url:
            raise PushDeliveryError("PUSH_HTTP_URL is not configured")

    def send(self, *, platform: str, token: str, message: PushMessage) -> None:
        try:
            response = httpx.post(
                self.url,
                json={
                    "platform": platform,
                    "token": token,
                    "title": message.title,
                    "body": message.body,
                    "data": message.data,
                },
                headers={"Authorization": f"Bearer {self.token}"} if self.token else {},
                timeout=5.0,
            )
        except httpx.HTTPError as exc:
            raise PushDeliveryError(f"push gateway unreachable: {exc}") from exc
        if response.status_code == 410:
            raise DeviceGone(token)
        if response.status_code >= 300:
            raise PushDeliveryError(f"push gateway answered {response.status_code}")


@cache
def push_backend() -> PushBackend:
    backend: PushBackend = import_string(settings.PUSH_BACKEND)()
    return backend
