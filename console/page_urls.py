"""The console's pages, served at ``/console/`` (CONTRACT section 4); its API is
``console.urls`` at ``/api/console/v1/``."""

from django.urls import path

from console import pages, pages_oversight, pages_prescribing

app_name = "console-pages"

urlpatterns = [
    path("", pages.home, name="home"),
    path("login/", pages.login_page, name="login"),
    path("doctor/", pages.doctor_home, name="doctor"),
    path(
        "doctor/consultations/<uuid:consultation_id>/",
        pages.consultation_room,
        name="consultation-room",
    ),
    *pages_prescribing.urlpatterns,
    *pages_oversight.urlpatterns,
]
