"""Sending text messages: one interface, a backend per gateway.

``LoggingSmsBackend`` (demo) writes the message to the log. ``HttpSmsBackend`` posts
JSON to an SMS gateway at ``SMS_HTTP_URL`` with a bearer token; hospitals whose gateway
speaks another protocol add a backend class and name it in ``SMS_BACKEND``.
"""

from __future__ import annotations

import logging
from functools import cache
from typing import Protocol

import httpx
from django.conf import settings
from django.utils.module_loading import import_string

logger = logging.getLogger("backend.identity.sms")


class SmsDeliveryError(Exception):
    pass


class SmsBackend(Protocol):
    def send(self, *, phone: str, template: str, params: dict[str, str]) -> None: ...


class LoggingSmsBackend:
    def send(self, *, phone: str, template: str, params: dict[str, str]) -> None:
        logger.warning("SMS to %s (%s): %s", phone, template, params)


class HttpSmsBackend:
    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        self.url = url or settings.SMS_HTTP_URL
        self.token = token or settings.SMS_HTTP_TOKEN
        if not self.url:
            raise SmsDeliveryError("SMS_HTTP_URL is not configured")

    def send(self, *, phone: str, template: str, params: dict[str, str]) -> None:
        try:
            response = httpx.post(
                self.url,
                json={"phone": phone, "template": template, "params": params},
                headers={"Authorization": f"Bearer {self.token}"} if self.token else {},
                timeout=5.0,
            )
        except httpx.HTTPError as exc:
            raise SmsDeliveryError(f"SMS gateway unreachable: {exc}") from exc
        if response.status_code >= 300:
            raise SmsDeliveryError(f"SMS gateway answered {response.status_code}")


@cache
def sms_backend() -> SmsBackend:
    backend: SmsBackend = import_string(settings.SMS_BACKEND)()
    return backend
