"""Collects the WebSocket routes that installed apps register in their ``routing.py``."""

from __future__ import annotations

from importlib import import_module
from importlib.util import find_spec
from typing import Any

from django.apps import apps


def websocket_urlpatterns() -> list[Any]:
    patterns: list[Any] = []
    for config in apps.get_app_configs():
        module_name = f"{config.name}.routing"
        if find_spec(module_name) is None:
            continue
        patterns.extend(getattr(import_module(module_name), "websocket_urlpatterns", []))
    return patterns
