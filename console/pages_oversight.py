"""The console's pages for oversight: the regulator's and the hospital administrator's
(placeholders until they land). Views as in ``console.pages``; the URLs are included by
``console.page_urls``."""

from django.urls import path

from backend.identity.models import Role
from console import pages

urlpatterns = [
    path("regulator/", pages.role_home(Role.REGULATOR), name="regulator"),
    path("administrator/", pages.role_home(Role.ADMINISTRATOR), name="administrator"),
]
