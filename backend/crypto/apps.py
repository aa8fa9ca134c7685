from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core.signals import setting_changed


def _reset_keyring(*, setting: str, **kwargs: Any) -> None:
    if setting in {"FIELD_ENCRYPTION_KEYS", "BLIND_INDEX_KEY"}:
        from backend.crypto.keyring import keyring

        keyring.cache_clear()


class CryptoConfig(AppConfig):
    name = "backend.crypto"
    label = "crypto"
    verbose_name = "Field encryption"

    def ready(self) -> None:
        setting_changed.connect(_reset_keyring, dispatch_uid="crypto-reset-keyring")
