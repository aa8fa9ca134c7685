from django.urls import path

from regulators import api

app_name = "regulator"

urlpatterns = [
    path("records", api.RecordsApi.as_view(), name="records"),
    path("alerts", api.AlertsApi.as_view(), name="alerts"),
    path("indicators", api.IndicatorsApi.as_view(), name="indicators"),
    path("ws-ticket", api.FeedTicketApi.as_view(), name="ws-ticket"),
]
