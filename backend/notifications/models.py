"""Device tokens for push notifications, and who has a WebSocket open right now."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _


class Platform(models.TextChoices):
    IOS = "ios", "iOS"
    ANDROID = "android", "Android"
    HARMONY = "harmony", "HarmonyOS"
    WEB = "web", _("Web push")


class Device(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="devices"
    )
    platform = models.CharField(max_length=10, choices=Platform.choices)
    token = models.CharField(max_length=500)
    created_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["platform", "token"], name="device_token_unique")
        ]

    def __str__(self) -> str:
        return f"{self.platform}:{self.token[:8]}…"


class SocketPresence(models.Model):
    """One row per open WebSocket. Rows of a crashed process age out by ``heartbeat_at``,
    so presence never depends on a process having said goodbye."""

    channel_name = models.CharField(max_length=200, primary_key=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    topic = models.CharField(
        max_length=100,
        db_index=True,
        help_text=_("What the socket follows, e.g. consultation:<id>"),
    )
    connected_at = models.DateTimeField()
    heartbeat_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"{self.user_id} on {self.topic}"
