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

What stays in the scope for the life of the connection is kept small:

- ``scope["user"]`` is the account reduced to its id and role (``_account_ref``), not
  the model instance as loaded (password hash, encrypted phone and TOTP seed, dates):
  about 0.8 KB less per socket. Consumers read only ``pk``, ``role`` and
  ``is_authenticated``, and hand it to services as a foreign key; any other field is
  deferred (read from the database, in a sync thread, if a service ever needs it).
- The gate (origin check and authentication in one layer, ``WebSocketGate``) wraps
  each route (``gated_routes``), inside Channels' ``URLRouter``: it writes into the
  router's copy of the scope, which has room for the two keys, instead of into
  Daphne's, which would be reallocated (about 0.4 KB); and the origin check keeps no
  frame and no parsed ``Origin`` for the life of the connection, as Channels'
  ``OriginValidator`` layer would.
"""

from __future__ import annotations

import contextlib
import functools
from importlib import import_module
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlparse

from channels.db import database_sync_to_async
from channels.security.websocket import (
    AllowedHostsOriginValidator,
    OriginValidator,
    WebsocketDenier,
)
from django.conf import settings
from django.contrib.auth import get_user
from django.contrib.auth.models import AnonymousUser
from django.http import parse_cookie
from django.urls import URLPattern

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


def _account_ref(user: Any) -> Any:
    """The account as the connection keeps it: id and role, the other fields deferred."""
    if not user.is_authenticated:
        return user
    return type(user).from_db(user._state.db, ["id", "role"], (user.pk, user.role))


async def _authenticate(scope: dict[str, Any]) -> tuple[Any, str]:
    tickets = parse_qs(scope.get("query_string", b"").decode()).get("ticket")
    if tickets:
        redeemed = await database_sync_to_async(ws_ticket_redeem)(
            ticket=tickets[0], path=scope["path"]
        )
        return (_account_ref(redeemed) if redeemed is not None else AnonymousUser()), "ticket"
    session_key = _session_key(scope)
    if not session_key:
        return AnonymousUser(), "session"
    return _account_ref(await database_sync_to_async(_session_user)(session_key)), "session"


@functools.cache
def _origins() -> OriginValidator:
    return AllowedHostsOriginValidator(None)


def _origin_allowed(scope: dict[str, Any]) -> bool:
    """Channels' ``AllowedHostsOriginValidator`` check (the ``Origin`` header against
    ``ALLOWED_HOSTS``), as its ``__call__`` makes it."""
    parsed = None
    for name, value in scope.get("headers", []):
        if name == b"origin":
            with contextlib.suppress(UnicodeDecodeError):
                parsed = urlparse(value.decode("latin1"))
    return bool(_origins().valid_origin(parsed))


class WebSocketGate:
    """In front of one WebSocket route: refuses a foreign ``Origin`` (before a ticket is
    spent), then authenticates. One coroutine frame for both (each ASGI layer stays on
    the stack for the life of the connection), and inside Channels' ``URLRouter`` so it
    writes into the router's copy of the scope (see the module docstring)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if not _origin_allowed(scope):
            return await WebsocketDenier()(scope, receive, send)
        # Set on the scope it is given rather than a copy: a copy would stay alive, about
        # 0.8 KB, for as long as the socket is open.
        scope["user"], scope["auth_method"] = await _authenticate(scope)
        return await self.inner(scope, receive, send)


def gated_routes(routes: list[Any]) -> list[Any]:
    """``routes`` (Django URL patterns of ASGI apps) with each app behind
    ``WebSocketGate``, for Channels' ``URLRouter``."""
    return [
        URLPattern(route.pattern, WebSocketGate(route.callback), route.default_args, route.name)
        for route in routes
    ]
