"""Presence of open sockets, device registration, and notifying people who are away.

Domain apps call ``notify_if_away`` after their transaction commits; the push itself
goes out through a Celery task (network calls never run inside a request's
transaction), which retries temporary failures and forgets tokens the gateway rejects.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from backend.api.problems import DomainError
from backend.compiled_queries import CompiledQuery
from backend.identity.models import User
from backend.notifications.backends import DeviceGone, PushMessage, push_backend
from backend.notifications.models import Device, Platform, SocketPresence

logger = logging.getLogger(__name__)


def presence_enter(*, channel_name: str, user: User, topic: str) -> None:
    now = timezone.now()
    SocketPresence.objects.update_or_create(
        channel_name=channel_name,
        defaults={"user": user, "topic": topic, "connected_at": now, "heartbeat_at": now},
    )


def presence_heartbeat(*, channel_name: str) -> None:
    SocketPresence.objects.filter(channel_name=channel_name).update(heartbeat_at=timezone.now())


def presence_leave(*, channel_name: str) -> None:
    SocketPresence.objects.filter(channel_name=channel_name).delete()


_PRESENT = CompiledQuery(
    lambda p: SocketPresence.objects.filter(
        topic=p.topic, user_id=p.user, heartbeat_at__gte=p.since
    ).values_list("user_id", flat=True),
    topic=SocketPresence._meta.get_field("topic"),
    user=SocketPresence._meta.get_field("user"),
    since=SocketPresence._meta.get_field("heartbeat_at"),
)


def present_users(*, topic: str, user_ids: list[Any]) -> set[str]:
    """Which of ``user_ids`` have a live socket on ``topic`` (heartbeat recent enough)."""
    fresh_since = timezone.now() - dt.timedelta(seconds=settings.PRESENCE_TTL_SECONDS)
    if len(user_ids) == 1:  # the usual case (a patient's notice): one compiled statement
        rows = _PRESENT.all(topic=topic, user=user_ids[0], since=fresh_since)
    else:
        rows = list(
            SocketPresence.objects.filter(
                topic=topic, user_id__in=user_ids, heartbeat_at__gte=fresh_since
            ).values_list("user_id", flat=True)
        )
    return {str(u) for u in rows}


def presence_purge_stale() -> int:
    cutoff = timezone.now() - dt.timedelta(seconds=settings.PRESENCE_TTL_SECONDS * 10)
    deleted, _ = SocketPresence.objects.filter(heartbeat_at__lt=cutoff).delete()
    return deleted


def device_register(*, user: User, platform: str, token: str) -> Device:
    if platform not in Platform.values:
        raise DomainError(
            "validation_error",
            "Unknown platform.",
            errors={"platform": [f"Use one of {', '.join(Platform.values)}."]},
        )
    token = token.strip()
    if not token:
        raise DomainError(
            "validation_error", "A token is required.", errors={"token": ["Required."]}
        )
    with transaction.atomic():
        # A token moves with the phone: the last account to register it owns it.
        device, _ = Device.objects.update_or_create(
            platform=platform, token=token, defaults={"user": user}
        )
    return device


def device_unregister(*, user: User, device_id: Any) -> None:
    deleted, _ = Device.objects.filter(pk=device_id, user=user).delete()
    if not deleted:
        raise DomainError("not_found", "No such device.")


def notify_if_away(
    *, topic: str, user_ids: list[Any], title: str, body: str, data: dict[str, Any]
) -> list[str]:
    """Queue a push for each of ``user_ids`` without a live socket on ``topic``.
    Returns the ids notified. Call after commit."""
    from backend.notifications.tasks import deliver_push

    present = present_users(topic=topic, user_ids=user_ids)
    away = [str(u) for u in user_ids if str(u) not in present]
    for user_id in away:
        try:
            deliver_push.delay(user_id=user_id, title=title, body=body, data=data)
        except Exception:  # the broker is down: a missed push must not break the chat
            logger.exception("could not queue a push notification for %s", user_id)
    return away


def push_deliver(*, user_id: str, title: str, body: str, data: dict[str, Any]) -> int:
    """Send one notification to every device of the account; returns devices reached."""
    message = PushMessage(title=title, body=body, data=data)
    reached = 0
    for device in Device.objects.filter(user_id=user_id):
        try:
            push_backend().send(platform=device.platform, token=device.token, message=message)
        except DeviceGone:
            device.delete()
            continue
        reached += 1
    return reached
