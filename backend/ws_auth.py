"""WebSocket authentication: a single-use ticket (``?ticket=``) or the console session.

Bearer tokens in URLs are not accepted (CONTRACT section 1). A consumer that needs an
account closes with 4401 when ``scope["user"]`` is anonymous.

One middleware layer puts the account in ``scope["user"]`` (and ``scope["auth_method"]``),
instead of Channels' cookie, session and auth middleware stack: each layer of that stack
stays alive for the whole connection (a copied scope, a coroutine frame, a lazy session
and a lazy user, a ``send`` wrapper called for every frame), which a chat with thousands
of idle sockets pays per socket. A WebSocket never saves the session (Channels only
saves it on an HTTP response), so only reading it is needed; the session is not kept in
the scope.
"""

from __future__ import annotations

from importlib import import_module
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user
from django.contrib.auth.models import AnonymousUser
from django.http import parse_cookie

from backend.identity.authentication import SESSION_VERIFIED
from backend.identity.services import ws_ticket_redeem

CLOSE_NOT_AUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404


def _session_key(scope: dict[str, Any]) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            return parse_cookie(value.decode("latin1")).get(settings.SESSION_COOKIE_NAME)
    return None


def _session_user(session_key: str) -> Any:
    """The console account of a session that passed the second factor; otherwise
    anonymous. Django's own ``get_user`` checks the session's auth hash."""
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    if not session.get(SESSION_VERIFIED):
        return AnonymousUser()
    return get_user(SimpleNamespace(session=session))  # type: ignore[arg-type]


async def _authenticate(scope: dict[str, Any]) -> tuple[Any, str]:
    tickets = parse_qs(scope.get("query_string", b"").decode()).get("ticket")
    if tickets:
        redeemed = await database_sync_to_async(ws_ticket_redeem)(
            ticket=tickets[0], path=scope["path"]
        )
        return (redeemed if redeemed is not None else AnonymousUser()), "ticket"
    session_key = _session_key(scope)
    if not session_key:
        return AnonymousUser(), "session"
    return await database_sync_to_async(_session_user)(session_key), "session"


class WebSocketAuthMiddleware:
    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        # Set on the connection's own scope rather than a copy (Daphne makes one per
        # connection and never reads it back; the router copies it again anyway): a
        # copy would stay alive, about 0.8 KB, for as long as the socket is open.
        scope["user"], scope["auth_method"] = await _authenticate(scope)
        return await self.inner(scope, receive, send)
