"""ASGI entry point, served by Daphne: HTTP through Django, WebSockets through Channels.

WebSocket routes are registered by the apps themselves (each app's ``routing.py``
exposes ``websocket_urlpatterns``), so the kernel imports no app.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "backend.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402

from backend.ws_auth import WebSocketAuthMiddleware  # noqa: E402
from backend.ws_routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            WebSocketAuthMiddleware(URLRouter(websocket_urlpatterns()))
        ),
    }
)
