from __future__ import annotations

from rest_framework import serializers


class LoginInput(serializers.Serializer):  # type: ignore[type-arg]
    username = serializers.CharField(max_length=150)
    password = serializers.CharField(max_length=200, trim_whitespace=False)


class LoginOutput(serializers.Serializer):  # type: ignore[type-arg]
    second_factor_required = serializers.BooleanField()
    user = serializers.DictField(required=False)


class TotpInput(serializers.Serializer):  # type: ignore[type-arg]
    code = serializers.CharField(max_length=10)


class SessionOutput(serializers.Serializer):  # type: ignore[type-arg]
    user = serializers.DictField()
    idle_seconds = serializers.IntegerField(
        help_text="The session ends after this long without a request"
    )
