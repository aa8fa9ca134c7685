"""Real-name (face) identity checks of doctors before they accept consultations
(DOMAIN rule 1). One interface; the provider is chosen by ``IDENTITY_PROVIDER``.

``DemoIdentityProvider`` passes at once and says so. A hospital plugs in its provider
(a face-verification service) with a class that implements ``IdentityProvider``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Protocol

from django.conf import settings
from django.utils.module_loading import import_string

from backend.organisations.models import Practitioner


@dataclass(frozen=True)
class IdentityCheckOutcome:
    passed: bool
    provider: str
    reference: str
    message: str


class IdentityProvider(Protocol):
    def check(self, *, practitioner: Practitioner) -> IdentityCheckOutcome: ...


class DemoIdentityProvider:
    def check(self, *, practitioner: Practitioner) -> IdentityCheckOutcome:
        return IdentityCheckOutcome(
            passed=True,
            provider="demo",
            reference=f"demo-{practitioner.pk}",
            message="Demo identity provider: passed without a face check (not for production).",
        )


@cache
def identity_provider() -> IdentityProvider:
    provider: IdentityProvider = import_string(settings.IDENTITY_PROVIDER)()
    return provider
