"""Django's database sessions, with the per-request read as a compiled query.

Every console request reads its session row; Django builds and compiles that SELECT
again each time (``backend/compiled_queries.py``). The table, the row format and the
expiry rule are Django's own (``django.contrib.sessions.backends.db``).
"""

from __future__ import annotations

import logging
from typing import Any

from django.contrib.sessions.backends.db import SessionStore as DatabaseSessionStore
from django.contrib.sessions.models import Session
from django.core.exceptions import SuspiciousOperation
from django.utils import timezone

from backend.compiled_queries import CompiledQuery

_SESSION = CompiledQuery(
    lambda p: Session.objects.filter(session_key=p.key, expire_date__gt=p.now)[:1],
    key=Session._meta.get_field("session_key"),
    now=Session._meta.get_field("expire_date"),
)


class SessionStore(DatabaseSessionStore):
    def _get_session_from_db(self) -> Any:
        try:
            found = _SESSION.first(key=self.session_key, now=timezone.now())
        except SuspiciousOperation as e:  # as Django's: logged, and no session
            logging.getLogger(f"django.security.{e.__class__.__name__}").warning(str(e))
            found = None
        if found is None:
            self._session_key = None
        return found
