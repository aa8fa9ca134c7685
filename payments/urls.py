from django.urls import path

from payments import api

app_name = "payments"

urlpatterns = [
    path("notify/<slug:channel>", api.NotifyApi.as_view(), name="notify"),
]
