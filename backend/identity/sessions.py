"""The console session's idle timeout, extended without a write on every request.

Django's ``SESSION_SAVE_EVERY_REQUEST`` rewrites the session row (a transaction of its
own) on every request of a signed-in user, to push its expiry forward. Here a request
pushes it forward only when the last push is ``SESSION_REFRESH_SECONDS`` old (30 s by
default), so a user who keeps working still ends idle ``CONSOLE_SESSION_IDLE_SECONDS``
after their last request, give or take that much; the console's "stay signed in" dialog
comes a minute before the end and always extends (``SessionApi`` marks the session
modified), so it never races the refresh window.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponseBase

#: Unix time of the last expiry push, kept in the session itself.
REFRESHED_AT = "_refreshed_at"


def session_refresh(request: HttpRequest) -> None:
    """Push the session's expiry forward on this response (the session middleware saves
    it and sets the cookie again)."""
    request.session[REFRESHED_AT] = int(time.time())


class SessionRefreshMiddleware:
    """Goes right after ``SessionMiddleware``: marks a signed-in session modified when its
    expiry was last pushed forward ``SESSION_REFRESH_SECONDS`` ago or more. Requests that
    never read the session (API tokens, static files) and ended sessions are left
    alone."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        response = self.get_response(request)
        session = getattr(request, "session", None)
        if session is None or not session.accessed or session.is_empty():
            return response
        # A session written anyway (signing in, say) records the push it gets for free.
        if session.modified or time.time() - session.get(REFRESHED_AT, 0) >= (
            settings.SESSION_REFRESH_SECONDS
        ):
            session_refresh(request)
        return response
