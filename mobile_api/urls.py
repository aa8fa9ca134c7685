from django.urls import path

from mobile_api import api

app_name = "mobile"

urlpatterns = [
    path("auth/otp", api.OtpApi.as_view(), name="auth-otp"),
    path("auth/token", api.TokenApi.as_view(), name="auth-token"),
    path("auth/refresh", api.RefreshApi.as_view(), name="auth-refresh"),
    path("me", api.MeApi.as_view(), name="me"),
]
