"""ASGI entry point, served by Daphne: HTTP through Django, WebSockets through Channels.

WebSocket routes are registered by the apps themselves (each app's ``routing.py``
exposes ``websocket_urlpatterns``), so the kernel imports no app. HTTP requests run their
sync views on ``HTTP_SYNC_THREADS`` reused threads (``backend.http_threads``).
"""

from __future__ import annotations

import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backend.settings")
django.setup(set_prefix=False)

from django.conf import settings  # noqa: E402

from backend.http_threads import PooledThreadsASGIHandler  # noqa: E402

# Django's ASGI handler, with sync views on a fixed set of reused threads (see the module).
django_asgi_app = PooledThreadsASGIHandler(threads=settings.HTTP_SYNC_THREADS)

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from backend.ws_auth import gated_routes  # noqa: E402
from backend.ws_routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": URLRouter(gated_routes(websocket_urlpatterns())),
    }
)
