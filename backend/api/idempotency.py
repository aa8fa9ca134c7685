"""``Idempotency-Key`` for mutating HTTP calls (CONTRACT section 0).

A client that lost a response retries with the same key and body and gets the stored
response back, marked ``Idempotent-Replayed: true``; the same key with another body is
refused with 422 ``idempotency_key_reused``. A request that fails (any error response)
stores nothing: its retry runs again. Views that issue credentials opt out
(``idempotency_exempt = True``) so that no token is ever stored in this table.
See docs/idempotency.md.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.encoders import JSONEncoder

from backend.api.models import IdempotencyRecord
from backend.api.problems import DomainError
from backend.compiled_queries import CompiledQuery

HEADER = "Idempotency-Key"
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_KEY = re.compile(r"[\x21-\x7e]{1,255}")
#: A reservation older than this belongs to a request whose process died.
ABANDONED_AFTER = dt.timedelta(minutes=5)


class Replay(Exception):
    def __init__(self, record: IdempotencyRecord) -> None:
        self.record = record


def _owner(request: Request) -> str:
    user = request.user
    if user is not None and user.is_authenticated:
        return f"user:{user.pk}"
    # Anonymous callers are told apart by address, so they cannot replay each other's keys.
    return f"anon:{request.META.get('REMOTE_ADDR', '')}"


def _fingerprint(request: Request) -> str:
    digest = hashlib.sha256()
    digest.update(f"{request.method}\n{request.get_full_path()}\n".encode())
    content_type = request.content_type or ""
    if content_type.startswith("multipart/"):
        for name in sorted(request.data.keys()):
            if name in request.FILES:
                continue
            digest.update(f"{name}={request.POST.getlist(name)!r}\n".encode())
        for name in sorted(request.FILES.keys()):
            for upload in request.FILES.getlist(name):
                file_hash = hashlib.sha256()
                for chunk in upload.chunks():
                    file_hash.update(chunk)
                upload.seek(0)
                digest.update(f"{name}:{upload.size}:{file_hash.hexdigest()}\n".encode())
    else:
        digest.update(request._request.body)
    return digest.hexdigest()


_RECORD = CompiledQuery(
    lambda p: IdempotencyRecord.objects.filter(owner=p.owner, key=p.key)[:1],
    owner=IdempotencyRecord._meta.get_field("owner"),
    key=IdempotencyRecord._meta.get_field("key"),
)


def idempotency_begin(request: Request) -> IdempotencyRecord | None:
    """Reserve the key for this request, or raise ``Replay`` / a ``DomainError``."""
    if request.method not in MUTATING_METHODS:
        return None
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not _KEY.fullmatch(key):
        raise DomainError(
            "idempotency_key_invalid", "Use 1 to 255 visible ASCII characters, e.g. a UUID."
        )
    owner = _owner(request)
    fingerprint = _fingerprint(request)
    now = timezone.now()
    for _attempt in range(2):
        existing = _RECORD.first(owner=owner, key=key)
        if existing is not None and existing.expires_at <= now:
            existing.delete()
            existing = None
        if existing is not None:
            if existing.fingerprint != fingerprint:
                raise DomainError(
                    "idempotency_key_reused",
                    "This Idempotency-Key was already used for a different request.",
                )
            if existing.status == IdempotencyRecord.Status.COMPLETED:
                raise Replay(existing)
            if now - existing.created_at < ABANDONED_AFTER:
                raise DomainError("idempotency_key_in_progress")
            existing.delete()
        try:
            with transaction.atomic():
                return IdempotencyRecord.objects.create(
                    owner=owner,
                    key=key,
                    method=request.method or "",
                    path=request.path[:500],
                    fingerprint=fingerprint,
                    status=IdempotencyRecord.Status.IN_PROGRESS,
                    created_at=now,
                    expires_at=now + dt.timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL_SECONDS),
                )
        except IntegrityError:
            continue  # a concurrent request reserved it first: read what it stored
    raise DomainError("idempotency_key_in_progress")


def idempotency_complete(record: IdempotencyRecord, response: Response) -> None:
    body = json.loads(json.dumps(response.data, cls=JSONEncoder))
    IdempotencyRecord.objects.filter(pk=record.pk).update(
        status=IdempotencyRecord.Status.COMPLETED,
        response_status=response.status_code,
        response_body=json.dumps(body, ensure_ascii=False),
    )


def idempotency_abandon(record: IdempotencyRecord) -> None:
    IdempotencyRecord.objects.filter(
        pk=record.pk, status=IdempotencyRecord.Status.IN_PROGRESS
    ).delete()


def replay_response(record: IdempotencyRecord) -> Response:
    return Response(
        json.loads(record.response_body) if record.response_body is not None else None,
        status=record.response_status or 200,
        headers={"Idempotent-Replayed": "true"},
    )


def idempotency_purge_expired() -> int:
    deleted, _ = IdempotencyRecord.objects.filter(expires_at__lte=timezone.now()).delete()
    return deleted


def run_idempotently(record: IdempotencyRecord, call: Any) -> Response:
    """Run the view handler; store a success, release the key on anything else.

    The handler is deliberately not wrapped in a transaction of ours: services commit
    what they must keep even when they refuse (a counted wrong code, an audit row of a
    failed attempt), and a rollback here would erase that.
    """
    try:
        response: Response = call()
    except BaseException:
        idempotency_abandon(record)
        raise
    if 200 <= response.status_code < 400:
        idempotency_complete(record, response)
    else:
        idempotency_abandon(record)
    return response
