"""The console's pages for prescriptions beyond the doctor's room: the doctor's
prescription editor, the pharmacist's live review queue and review page, and the
pharmacy's home (a placeholder until it lands). Views as in ``console.pages``: thin
shells whose scripts do everything through the console API; the URLs are included by
``console.page_urls``."""

from __future__ import annotations

from uuid import UUID

from django.http import HttpRequest, HttpResponse
from django.urls import path, reverse

from backend.identity.models import Role, User
from console import pages


@pages.console_page(Role.DOCTOR)
def prescription_editor(request: HttpRequest, user: User, consultation_id: UUID) -> HttpResponse:
    """Drug search, lines, the rule checks as the doctor types, save and sign (TOTP)."""
    return pages._page(
        request,
        "console/rx_editor.html",
        user=user,
        title="rx_editor_title",
        config={
            "consultation": str(consultation_id),
            "room_url": reverse("console-pages:consultation-room", args=[consultation_id]),
        },
        context={
            "room_url": reverse("console-pages:consultation-room", args=[consultation_id]),
        },
    )


@pages.console_page(Role.PHARMACIST)
def pharmacist_home(request: HttpRequest, user: User) -> HttpResponse:
    """The duty switch and the live review queue of the pharmacist's hospital."""
    return pages._page(
        request,
        "console/pharmacist.html",
        user=user,
        title="rx_pharmacist_title",
        config={"review_url": reverse("console-pages:pharmacist")},
    )


@pages.console_page(Role.PHARMACIST)
def prescription_review(request: HttpRequest, user: User, prescription_id: UUID) -> HttpResponse:
    """One prescription: lines, rule checks, the signature verification; approve
    (countersign with TOTP) or reject with a reason."""
    return pages._page(
        request,
        "console/rx_review.html",
        user=user,
        title="rx_review_title",
        config={
            "prescription": str(prescription_id),
            "queue_url": reverse("console-pages:pharmacist"),
        },
    )


urlpatterns = [
    path(
        "doctor/consultations/<uuid:consultation_id>/prescription/",
        prescription_editor,
        name="prescription-editor",
    ),
    path("pharmacist/", pharmacist_home, name="pharmacist"),
    path(
        "pharmacist/prescriptions/<uuid:prescription_id>/",
        prescription_review,
        name="prescription-review",
    ),
    path("pharmacy/", pages.role_home(Role.PHARMACY_STAFF), name="pharmacy"),
]
