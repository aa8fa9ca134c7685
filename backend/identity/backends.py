"""The console's authentication backend: Django's ``ModelBackend``, with the account read
on every signed-in request as a compiled query (``backend/compiled_queries.py``)."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import ValidationError

from backend.compiled_queries import CompiledQuery
from backend.identity.models import User

_ACCOUNT = CompiledQuery(lambda p: User.objects.filter(pk=p.id)[:1], id=User._meta.pk)


class AccountBackend(ModelBackend):
    def get_user(self, user_id: Any) -> User | None:
        try:
            user = _ACCOUNT.first(id=user_id)
        except (ValueError, TypeError, ValidationError):  # a malformed id in a session: no account
            return None
        return user if user is not None and self.user_can_authenticate(user) else None
