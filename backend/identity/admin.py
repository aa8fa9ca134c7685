from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.db.models import QuerySet
from django.http import HttpRequest

from backend.audit.services import RequestMeta
from backend.identity.models import ApiToken, User
from backend.identity.services import api_token_create, api_token_revoke, totp_enrol


@admin.register(User)
class UserAdmin(DjangoUserAdmin):  # type: ignore[type-arg]
    list_display = ("username", "display_name", "role", "is_active", "has_totp", "date_joined")
    list_filter = ("role", "is_active", "is_staff")
    search_fields = ("username", "display_name")
    ordering = ("username",)
    readonly_fields = ("date_joined", "last_login", "totp_confirmed_at")
    fieldsets = (
        (None, {"fields": ("username", "password", "role", "display_name")}),
        ("Status", {"fields": ("is_active", "is_staff", "is_superuser", "totp_confirmed_at")}),
        ("Permissions", {"fields": ("groups", "user_permissions")}),
        ("Dates", {"fields": ("date_joined", "last_login")}),
    )
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": ("username", "role", "display_name", "password1", "password2"),
            },
        ),
    )
    actions = ["enrol_totp"]

    @admin.display(boolean=True, description="TOTP")
    def has_totp(self, obj: User) -> bool:
        return bool(obj.totp_confirmed_at)

    @admin.action(description="Enrol a new authenticator (TOTP) and show its secret once")
    def enrol_totp(self, request: HttpRequest, queryset: QuerySet[User]) -> None:
        for user in queryset:
            secret = totp_enrol(
                user=user,
                actor=request.user,  # type: ignore[arg-type]
                meta=RequestMeta.from_request(request),
            )
            messages.warning(request, f"{user.username}: TOTP secret {secret} (shown once)")


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin[ApiToken]):
    list_display = (
        "name",
        "user",
        "prefix",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    )
    list_filter = ("revoked_at",)
    search_fields = ("name", "prefix", "user__username")
    fields = ("user", "name", "expires_at")
    autocomplete_fields = ("user",)
    actions = ["revoke"]

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        issued = api_token_create(
            user=obj.user,
            name=obj.name,
            expires_at=obj.expires_at,
            created_by=request.user,  # type: ignore[arg-type]
            meta=RequestMeta.from_request(request),
        )
        obj.pk = issued.token.pk
        obj.prefix = issued.token.prefix
        messages.warning(
            request, f"API token for {obj.user}: {issued.key} (shown once; copy it now)"
        )

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        count = sum(
            api_token_revoke(
                token=t,
                revoked_by=request.user,  # type: ignore[arg-type]
                meta=RequestMeta.from_request(request),
            )
            for t in queryset
        )
        messages.success(request, f"Revoked {count} token(s).")
