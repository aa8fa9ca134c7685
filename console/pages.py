"""The console's pages (``/console/``): thin views that render a page shell.

Everything a page shows and does goes through the console API (``/api/console/v1/``)
from the page's script, with the session cookie and the CSRF header, so the pages hold
no business rule: a view checks who is signed in, picks the language and hands the
script its configuration. See docs/console.md.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode
from uuid import UUID

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import ensure_csrf_cookie

from backend.identity.authentication import SESSION_VERIFIED
from backend.identity.models import Role, User
from backend.identity.services import CONSOLE_ROLES
from console.i18n import console_language, messages_for, remember_language

API_ROOT = "/api/console/v1"

#: Each role's home page (URL names in ``console.page_urls``).
ROLE_HOMES: dict[str, str] = {
    Role.DOCTOR: "console-pages:doctor",
    Role.PHARMACIST: "console-pages:pharmacist",
    Role.PHARMACY_STAFF: "console-pages:pharmacy",
    Role.REGULATOR: "console-pages:regulator",
    Role.ADMINISTRATOR: "console-pages:administrator",
}

View = Callable[..., HttpResponse]


def _signed_in(request: HttpRequest) -> User | None:
    """The console account of a session that completed every factor its role needs."""
    user = request.user
    if (
        isinstance(user, User)
        and user.is_active
        and user.role in CONSOLE_ROLES
        and request.session.get(SESSION_VERIFIED)
    ):
        return user
    return None


def _home_url(user: User) -> str:
    return reverse(ROLE_HOMES[user.role])


def _safe_next(request: HttpRequest) -> str | None:
    target = request.GET.get("next", "")
    if target.startswith("/console/") and url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return target
    return None


def console_page(*roles: str) -> Callable[[View], View]:
    """Signed-in console accounts only (else the sign-in page, coming back here after);
    with ``roles``, only those roles (others go to their own home)."""

    def decorate(view: View) -> View:
        @functools.wraps(view)
        @never_cache
        @ensure_csrf_cookie
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            user = _signed_in(request)
            if user is None:
                login = reverse("console-pages:login")
                return HttpResponseRedirect(
                    f"{login}?{urlencode({'next': request.get_full_path()})}"
                )
            if roles and user.role not in roles:
                return redirect(_home_url(user))
            return view(request, user, *args, **kwargs)

        return wrapped

    return decorate


def _page(
    request: HttpRequest,
    template: str,
    *,
    user: User | None,
    title: str,
    title_vars: dict[str, str] | None = None,
    config: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
) -> HttpResponse:
    language = console_language(request)
    texts = messages_for(language)
    page_config = {
        "lang": language,
        "api": API_ROOT,
        "idle_seconds": settings.SESSION_COOKIE_AGE,
        "urls": {
            "login": reverse("console-pages:login"),
            "home": reverse("console-pages:home"),
            "doctor": reverse("console-pages:doctor"),
        },
        "user": (
            {"id": str(user.pk), "role": user.role, "display_name": user.display_name}
            if user
            else None
        ),
        **(config or {}),
    }
    response = render(
        request,
        template,
        {
            "t": texts,
            "lang": language,
            "title": texts[title].format(**(title_vars or {})),
            "console_user": user,
            "role_name": texts[f"role_{user.role}"] if user else "",
            "page_config": page_config,
            "page_path": request.path,
            **(context or {}),
        },
    )
    remember_language(request, response, language)
    return response


@never_cache
@ensure_csrf_cookie
def login_page(request: HttpRequest) -> HttpResponse:
    """Password, then the authenticator code; then the ``next`` page or the role's home."""
    user = _signed_in(request)
    target = _safe_next(request)
    if user is not None:
        return redirect(target or _home_url(user))
    return _page(
        request,
        "console/login.html",
        user=None,
        title="login_title",
        config={"next": target},
        context={"signed_out_idle": request.GET.get("reason") == "idle"},
    )


@console_page()
def home(request: HttpRequest, user: User) -> HttpResponse:
    """``/console/``: each role's home."""
    return redirect(_home_url(user))


@console_page(Role.DOCTOR)
def doctor_home(request: HttpRequest, user: User) -> HttpResponse:
    """Duty switch, identity check, the live queue and the doctor's open consultations."""
    return _page(request, "console/doctor.html", user=user, title="doctor_title")


@console_page(Role.DOCTOR)
def consultation_room(request: HttpRequest, user: User, consultation_id: UUID) -> HttpResponse:
    """Patient summary, chat and the consultation's actions (the API decides who may)."""
    return _page(
        request,
        "console/room.html",
        user=user,
        title="room_title",
        config={
            "consultation": str(consultation_id),
            "ice_servers": settings.WEBRTC_ICE_SERVERS,
        },
    )


def role_home(role: str) -> View:
    """The home of a role whose pages come later (issue 3): a page that says so."""

    @console_page(role)
    def placeholder(request: HttpRequest, user: User) -> HttpResponse:
        language = console_language(request)
        return _page(
            request,
            "console/placeholder.html",
            user=user,
            title="placeholder_title",
            title_vars={"role": messages_for(language)[f"role_{role}"]},
        )

    placeholder.__name__ = f"{role}_home"
    return placeholder
