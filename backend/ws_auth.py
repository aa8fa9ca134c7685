"""WebSocket authentication: a single-use ticket (``?ticket=``) or the console session.

Bearer tokens in URLs are not accepted (CONTRACT section 1). A consumer that needs an
account closes with 4401 when ``scope["user"]`` is anonymous.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.auth import AuthMiddleware, get_user
from channels.db import database_sync_to_async
from channels.sessions import CookieMiddleware, SessionMiddleware
from django.contrib.auth.models import AnonymousUser

from backend.identity.authentication import SESSION_VERIFIED
from backend.identity.services import ws_ticket_redeem

CLOSE_NOT_AUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_NOT_FOUND = 4404


class _TicketOrSessionAuth(AuthMiddleware):
    async def resolve_scope(self, scope: dict[str, Any]) -> None:
        query = parse_qs(scope.get("query_string", b"").decode())
        tickets = query.get("ticket")
        user: Any = AnonymousUser()
        if tickets:
            redeemed = await database_sync_to_async(ws_ticket_redeem)(
                ticket=tickets[0], path=scope["path"]
            )
            if redeemed is not None:
                user = redeemed
            scope["auth_method"] = "ticket"
        elif "session" in scope:
            session_user = await get_user(scope)
            session = scope["session"]
            verified = await database_sync_to_async(lambda: session.get(SESSION_VERIFIED))()
            if session_user.is_authenticated and verified:
                user = session_user
            scope["auth_method"] = "session"
        scope["user"]._wrapped = user


def WebSocketAuthMiddleware(inner: Any) -> Any:  # noqa: N802 - mirrors AuthMiddlewareStack
    return CookieMiddleware(SessionMiddleware(_TicketOrSessionAuth(inner)))
