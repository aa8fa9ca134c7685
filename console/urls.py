from django.urls import path

from console import api

app_name = "console"

urlpatterns = [
    path("auth/csrf", api.CsrfApi.as_view(), name="csrf"),
    path("auth/login", api.LoginApi.as_view(), name="login"),
    path("auth/totp", api.TotpApi.as_view(), name="totp"),
    path("auth/logout", api.LogoutApi.as_view(), name="logout"),
    path("ws-ticket", api.WsTicketApi.as_view(), name="ws-ticket"),
]
