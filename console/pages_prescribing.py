"""The console's pages for prescriptions beyond the doctor's room: the pharmacist's
review and the pharmacy's home (placeholders until they land). Views as in
``console.pages``; the URLs are included by ``console.page_urls``."""

from django.urls import path

from backend.identity.models import Role
from console import pages

urlpatterns = [
    path("pharmacist/", pages.role_home(Role.PHARMACIST), name="pharmacist"),
    path("pharmacy/", pages.role_home(Role.PHARMACY_STAFF), name="pharmacy"),
]
