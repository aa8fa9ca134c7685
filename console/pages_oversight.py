"""The console's pages for oversight: the regulator's (live feed, alerts, indicators) and
the hospital administrator's (practitioners, regulator outbox, audit chain, payment
reconciliations). Views as in ``console.pages``: a shell and its configuration; the
page's script does the rest through ``/api/regulator/v1/`` and ``/api/console/v1/``.
The URLs are included by ``console.page_urls``."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.urls import path

from backend.identity.models import Role, User
from backend.organisations.models import Hospital, HospitalAdministrator, RegulatorOfficial
from console import pages

REGULATOR_API = "/api/regulator/v1"

#: Without a shared channel layer (the embedded default: the worker that delivers is not
#: the server that holds the socket) no push arrives; until the page has seen one, it
#: reconnects with ``?after=`` this often when the feed has been quiet, and the server
#: sends what it missed (the feed is resumable, CONTRACT section 7).
FEED_RESYNC_SECONDS = 5


@pages.console_page(Role.REGULATOR)
def regulator_home(request: HttpRequest, user: User) -> HttpResponse:
    """The province's live feed, its alerts and the indicators dashboard."""
    official = RegulatorOfficial.objects.select_related("province").filter(user=user).first()
    hospitals = (
        [
            {"id": str(h.pk), "name": h.name}
            for h in Hospital.objects.filter(province=official.province).order_by("name")
        ]
        if official
        else []
    )
    return pages._page(
        request,
        "console/regulator.html",
        user=user,
        title="ov_regulator_title",
        config={
            "regulator_api": REGULATOR_API,
            "hospitals": hospitals,
            "feed_resync_seconds": FEED_RESYNC_SECONDS,
        },
        context={
            "province": official.province.name if official else "",
            "hospitals": hospitals,
        },
    )


@pages.console_page(Role.ADMINISTRATOR)
def administrator_home(request: HttpRequest, user: User) -> HttpResponse:
    """Practitioners, the regulator outbox, the audit chain and payment reconciliations."""
    link = HospitalAdministrator.objects.select_related("hospital").filter(user=user).first()
    return pages._page(
        request,
        "console/administrator.html",
        user=user,
        title="ov_admin_title",
        context={"hospital": link.hospital.name if link else ""},
    )


urlpatterns = [
    path("regulator/", regulator_home, name="regulator"),
    path("administrator/", administrator_home, name="administrator"),
]
