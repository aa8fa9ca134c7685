from __future__ import annotations

from rest_framework import serializers


class OtpRequestInput(serializers.Serializer):  # type: ignore[type-arg]
    phone = serializers.CharField(max_length=20)


class OtpRequestOutput(serializers.Serializer):  # type: ignore[type-arg]
    expires_in = serializers.IntegerField(help_text="Seconds the code stays valid")
    resend_after = serializers.IntegerField(help_text="Seconds before another code may be sent")


class TokenInput(serializers.Serializer):  # type: ignore[type-arg]
    phone = serializers.CharField(max_length=20)
    code = serializers.CharField(max_length=10)


class RefreshInput(serializers.Serializer):  # type: ignore[type-arg]
    refresh = serializers.CharField(max_length=2000)


class TokenOutput(serializers.Serializer):  # type: ignore[type-arg]
    access = serializers.CharField()
    refresh = serializers.CharField()
    access_expires_at = serializers.DateTimeField()


class AffiliationOutput(serializers.Serializer):  # type: ignore[type-arg]
    kind = serializers.ChoiceField(choices=["hospital", "pharmacy", "province"])


class MeOutput(serializers.Serializer):  # type: ignore[type-arg]
    id = serializers.UUIDField()
    username = serializers.CharField()
    role = serializers.CharField()
    display_name = serializers.CharField(allow_blank=True)
    phone = serializers.CharField(allow_null=True, help_text="Masked, e.g. 138****0000")
    affiliation = serializers.DictField(allow_null=True)


class MePatchInput(serializers.Serializer):  # type: ignore[type-arg]
    display_name = serializers.CharField(max_length=100, allow_blank=True)
