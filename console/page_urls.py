"""The console's pages, served at ``/console/`` (CONTRACT section 4); its API is
``console.urls`` at ``/api/console/v1/``."""

from django.urls import path

from backend.identity.models import Role
from console import pages

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
    path("pharmacist/", pages.role_home(Role.PHARMACIST), name="pharmacist"),
    path("pharmacy/", pages.role_home(Role.PHARMACY_STAFF), name="pharmacy"),
    path("regulator/", pages.role_home(Role.REGULATOR), name="regulator"),
    path("administrator/", pages.role_home(Role.ADMINISTRATOR), name="administrator"),
]
