"""Signing in and the credentials that prove it (CONTRACT section 1).

Every function here is keyword-only and typed; views and consumers call these and
nothing else. Secrets (codes, tokens, tickets) are generated with ``secrets`` and stored
only as keyed hashes, so a database dump does not let anyone sign in.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import re
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.hashes import SHA1
from cryptography.hazmat.primitives.twofactor import InvalidToken
from cryptography.hazmat.primitives.twofactor.totp import TOTP
from django.conf import settings
from django.contrib.auth import authenticate
from django.core.cache import cache
from django.db import transaction
from django.utils import timezone

from backend.api.problems import DomainError
from backend.audit.services import RequestMeta, audit_record
from backend.compiled_queries import CompiledQuery
from backend.crypto.fields import blind_index_for, normalize_phone
from backend.identity.models import (
    ApiToken,
    OtpChallenge,
    RefreshToken,
    Role,
    User,
    WsTicket,
)
from backend.identity.sms import SmsDeliveryError, sms_backend

_CN_MOBILE = re.compile(r"^1[3-9]\d{9}$")


def _mac(value: str, purpose: str) -> str:
    return hmac.new(
        settings.SECRET_KEY.encode(), f"{purpose}\x00{value}".encode(), hashlib.sha256
    ).hexdigest()


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# --- Phone numbers and OTP -------------------------------------------------------------


def phone_normalize(*, phone: str) -> str:
    """A mainland mobile number as 11 digits, or ``validation_error``."""
    normalized = normalize_phone(phone)
    if not _CN_MOBILE.match(normalized):
        raise DomainError(
            "validation_error",
            "Enter a mainland China mobile number (11 digits, +86 optional).",
            errors={"phone": ["Enter a mainland China mobile number."]},
        )
    return normalized


def phone_index(*, phone: str) -> str:
    value = blind_index_for(User, "phone", phone)
    if value is None:
        raise DomainError("validation_error", "A phone number is required.")
    return value


@dataclass(frozen=True)
class OtpSent:
    expires_in: int
    resend_after: int


def otp_request(*, phone: str, meta: RequestMeta | None = None) -> OtpSent:
    """Send a 6-digit code to ``phone``. Limited per phone (one a minute, a daily cap)."""
    phone = phone_normalize(phone=phone)
    index = phone_index(phone=phone)
    now = timezone.now()
    latest = OtpChallenge.objects.filter(phone_index=index).order_by("-created_at").first()
    if latest is not None:
        wait = settings.OTP_RESEND_SECONDS - (now - latest.created_at).total_seconds()
        if wait > 0:
            raise DomainError(
                "throttled",
                f"A code was sent recently; wait {int(wait) + 1} s.",
                extra={"retry_after": int(wait) + 1},
            )
    sent_today = OtpChallenge.objects.filter(
        phone_index=index, created_at__gte=now - dt.timedelta(days=1)
    ).count()
    if sent_today >= settings.OTP_MAX_PER_PHONE_PER_DAY:
        raise DomainError("throttled", "Too many codes sent to this number today.")
    code = f"{secrets.randbelow(1_000_000):06d}"
    challenge = OtpChallenge.objects.create(
        phone_index=index,
        code_hash=_mac(f"{index}:{code}", "otp"),
        created_at=now,
        expires_at=now + dt.timedelta(seconds=settings.OTP_TTL_SECONDS),
        request_ip=(meta.ip if meta else None),
    )
    # The patient waits for this message, so it is sent now, after the challenge row is
    # committed (autocommit) and never inside a caller's transaction.
    try:
        sms_backend().send(
            phone=phone,
            template="login_code",
            params={"code": code, "minutes": str(settings.OTP_TTL_SECONDS // 60)},
        )
    except SmsDeliveryError as exc:
        challenge.delete()  # let the patient ask again at once
        raise DomainError(
            "sms_unavailable", "The text message could not be sent; try again."
        ) from exc
    return OtpSent(expires_in=settings.OTP_TTL_SECONDS, resend_after=settings.OTP_RESEND_SECONDS)


def otp_verify(*, phone: str, code: str) -> str:
    """Check a code; return the phone's blind index. Wrong codes count against the
    challenge, which burns after ``OTP_MAX_ATTEMPTS``."""
    phone = phone_normalize(phone=phone)
    index = phone_index(phone=phone)
    now = timezone.now()
    with transaction.atomic():
        challenge = (
            OtpChallenge.objects.select_for_update()
            .filter(phone_index=index, consumed_at__isnull=True, expires_at__gt=now)
            .order_by("-created_at")
            .first()
        )
        if challenge is None:
            raise DomainError("otp_invalid", "No valid code for this number; request a new one.")
        if challenge.attempts >= settings.OTP_MAX_ATTEMPTS:
            raise DomainError("otp_attempts_exceeded")
        if not hmac.compare_digest(challenge.code_hash, _mac(f"{index}:{code.strip()}", "otp")):
            challenge.attempts += 1
            challenge.save(update_fields=["attempts"])
            left = settings.OTP_MAX_ATTEMPTS - challenge.attempts
        else:
            challenge.consumed_at = now
            challenge.save(update_fields=["consumed_at"])
            return index
    # Raised after the block so that the counted attempt is committed.
    if left <= 0:
        raise DomainError("otp_attempts_exceeded")
    raise DomainError("otp_invalid", f"The code is wrong; {left} attempt(s) left.")


# --- Patients' tokens (JWT) --------------------------------------------------------------


@dataclass(frozen=True)
class TokenPair:
    access: str
    refresh: str
    access_expires_at: dt.datetime


def _jwt_key() -> str:
    return _mac("jwt-signing-key", "jwt")


def _encode(claims: dict[str, Any]) -> str:
    return jwt.encode(claims, _jwt_key(), algorithm="HS256")


def patient_get_or_create(*, phone: str, meta: RequestMeta | None = None) -> User:
    phone = phone_normalize(phone=phone)
    index = phone_index(phone=phone)
    user = User.objects.filter(phone_index=index).first()
    if user is not None:
        return user
    user = User.objects.create_user(
        username=f"patient-{uuid.uuid4().hex[:12]}", role=Role.PATIENT, phone=phone
    )
    audit_record(
        action="account.registered",
        actor=user,
        object_type="account",
        object_id=user.pk,
        after={"role": user.role},
        meta=meta,
    )
    return user


def tokens_issue(*, user: User, family: uuid.UUID | None = None) -> TokenPair:
    now = timezone.now()
    access_exp = now + dt.timedelta(seconds=settings.JWT_ACCESS_TTL_SECONDS)
    access = _encode(
        {
            "iss": settings.JWT_ISSUER,
            "sub": str(user.pk),
            "role": user.role,
            "typ": "access",
            "jti": uuid.uuid4().hex,
            "iat": int(now.timestamp()),
            "exp": int(access_exp.timestamp()),
        }
    )
    jti = uuid.uuid4()
    refresh_exp = now + dt.timedelta(seconds=settings.JWT_REFRESH_TTL_SECONDS)
    RefreshToken.objects.create(
        jti=jti, family=family or uuid.uuid4(), user=user, issued_at=now, expires_at=refresh_exp
    )
    refresh = _encode(
        {
            "iss": settings.JWT_ISSUER,
            "sub": str(user.pk),
            "typ": "refresh",
            "jti": str(jti),
            "iat": int(now.timestamp()),
            "exp": int(refresh_exp.timestamp()),
        }
    )
    return TokenPair(access=access, refresh=refresh, access_expires_at=access_exp)


def patient_login(*, phone: str, code: str, meta: RequestMeta | None = None) -> TokenPair:
    otp_verify(phone=phone, code=code)
    with transaction.atomic():
        user = patient_get_or_create(phone=phone, meta=meta)
        if not user.is_active:
            raise DomainError("authentication_failed", "This account is disabled.")
        if user.role != Role.PATIENT:
            raise DomainError("permission_denied", "Staff accounts sign in through the console.")
        pair = tokens_issue(user=user)
        audit_record(
            action="auth.patient_login",
            actor=user,
            object_type="account",
            object_id=user.pk,
            meta=meta,
        )
    return pair


def _decode(token: str, *, typ: str) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            _jwt_key(),
            algorithms=["HS256"],
            issuer=settings.JWT_ISSUER,
            options={"require": ["exp", "iat", "sub", "jti", "typ"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise DomainError("token_expired") from exc
    except jwt.InvalidTokenError as exc:
        raise DomainError("authentication_failed", "The token is invalid.") from exc
    if claims.get("typ") != typ:
        raise DomainError("authentication_failed", f"Not an {typ} token.")
    return claims


def access_token_user(*, token: str) -> User:
    claims = _decode(token, typ="access")
    user = User.objects.filter(pk=claims["sub"], is_active=True).first()
    if user is None:
        raise DomainError("authentication_failed", "The account no longer exists or is disabled.")
    return user


def tokens_refresh(*, refresh: str) -> TokenPair:
    """Rotate a refresh token. Presenting an already-rotated token revokes its family."""
    claims = _decode(refresh, typ="refresh")
    now = timezone.now()
    with transaction.atomic():
        stored = RefreshToken.objects.select_for_update().filter(jti=claims["jti"]).first()
        if stored is None:
            raise DomainError("authentication_failed", "Unknown refresh token.")
        if stored.revoked_at is not None:
            reused = stored.replaced_by is not None
            if reused:
                RefreshToken.objects.filter(family=stored.family, revoked_at__isnull=True).update(
                    revoked_at=now
                )
        else:
            reused = False
    if stored.revoked_at is not None:
        raise DomainError(
            "token_revoked",
            "This refresh token was already used; every session from it is signed out."
            if reused
            else "This refresh token has been revoked.",
        )
    with transaction.atomic():
        user = User.objects.filter(pk=stored.user_id, is_active=True).first()
        if user is None:
            raise DomainError("authentication_failed", "The account is disabled.")
        pair = tokens_issue(user=user, family=stored.family)
        new_jti = _decode(pair.refresh, typ="refresh")["jti"]
        updated = RefreshToken.objects.filter(jti=stored.jti, revoked_at__isnull=True).update(
            revoked_at=now, replaced_by=new_jti
        )
        if updated != 1:
            transaction.set_rollback(True)
            raise DomainError("token_revoked", "This refresh token was used concurrently.")
    return pair


def tokens_revoke_all(*, user: User) -> int:
    return RefreshToken.objects.filter(user=user, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )


# --- API tokens for machine clients ------------------------------------------------------

API_TOKEN_SCHEME = "Token"


@dataclass(frozen=True)
class IssuedApiToken:
    token: ApiToken
    key: str  # shown once; only its hash is stored


def api_token_create(
    *,
    user: User,
    name: str,
    created_by: User | None = None,
    expires_at: dt.datetime | None = None,
    meta: RequestMeta | None = None,
) -> IssuedApiToken:
    prefix = secrets.token_hex(4)
    secret = secrets.token_urlsafe(32)
    key = f"ih_{prefix}_{secret}"
    with transaction.atomic():
        token = ApiToken.objects.create(
            user=user,
            name=name,
            prefix=prefix,
            key_hash=_sha256(key),
            created_by=created_by,
            expires_at=expires_at,
        )
        audit_record(
            action="api_token.created",
            actor=created_by,
            object_type="api_token",
            object_id=token.pk,
            after={"user": str(user.pk), "name": name},
            meta=meta,
        )
    return IssuedApiToken(token=token, key=key)


_API_TOKEN = CompiledQuery(
    lambda p: ApiToken.objects.select_related("user").filter(prefix=p.prefix)[:1],
    prefix=ApiToken._meta.get_field("prefix"),
)


def api_token_authenticate(*, key: str) -> tuple[User, ApiToken]:
    parts = key.split("_")
    if len(parts) < 3 or parts[0] != "ih":
        raise DomainError("authentication_failed", "Malformed API token.")
    token = _API_TOKEN.first(prefix=parts[1])
    if token is None or not hmac.compare_digest(token.key_hash, _sha256(key)):
        raise DomainError("authentication_failed", "Unknown API token.")
    now = timezone.now()
    if token.revoked_at is not None:
        raise DomainError("token_revoked", "This API token has been revoked.")
    if token.expires_at is not None and token.expires_at <= now:
        raise DomainError("token_expired", "This API token has expired.")
    if not token.user.is_active:
        raise DomainError("authentication_failed", "The token's account is disabled.")
    if token.last_used_at is None or now - token.last_used_at > dt.timedelta(minutes=1):
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
    return token.user, token


def api_token_revoke(
    *, token: ApiToken, revoked_by: User | None, meta: RequestMeta | None = None
) -> bool:
    with transaction.atomic():
        updated = ApiToken.objects.filter(pk=token.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now(), revoked_by=revoked_by
        )
        if updated:
            audit_record(
                action="api_token.revoked",
                actor=revoked_by,
                object_type="api_token",
                object_id=token.pk,
                meta=meta,
            )
    return bool(updated)


# --- TOTP second factor --------------------------------------------------------------------

TOTP_DIGITS = 6
TOTP_STEP = 30


def _totp(secret_b32: str) -> TOTP:
    key = base64.b32decode(secret_b32.upper() + "=" * (-len(secret_b32) % 8))
    # RFC 6238 with HMAC-SHA1 is what every authenticator app implements.
    return TOTP(key, TOTP_DIGITS, SHA1(), TOTP_STEP, enforce_key_length=False)  # noqa: S303


def totp_enrol(*, user: User, actor: User | None = None, meta: RequestMeta | None = None) -> str:
    """Give ``user`` a new TOTP secret (base32) and return it for their authenticator app."""
    secret = base64.b32encode(secrets.token_bytes(20)).decode().rstrip("=")
    with transaction.atomic():
        user.totp_secret = secret
        user.totp_confirmed_at = timezone.now()
        user.totp_last_step = 0
        user.save(update_fields=["totp_secret", "totp_confirmed_at", "totp_last_step"])
        audit_record(
            action="totp.enrolled",
            actor=actor or user,
            object_type="account",
            object_id=user.pk,
            meta=meta,
        )
    return secret


def totp_provisioning_uri(*, user: User) -> str:
    if not user.totp_secret:
        raise DomainError("totp_not_enrolled")
    return _totp(user.totp_secret).get_provisioning_uri(user.username, "Internet Hospital")


def totp_code_at(*, secret: str, when: dt.datetime) -> str:
    """The code an authenticator shows at ``when`` (for scripts and tests)."""
    return _totp(secret).generate(int(when.timestamp())).decode()


def totp_verify(*, user: User, code: str) -> None:
    """Accept a code from the current 30-second step or the one on either side, once.

    A code (its step) used once cannot be used again, so an overheard code is useless.
    """
    if not user.totp_secret:
        raise DomainError("totp_not_enrolled")
    code = code.strip()
    if not (code.isdigit() and len(code) == TOTP_DIGITS):
        raise DomainError("totp_invalid", "Enter the 6-digit code from your authenticator.")
    totp = _totp(user.totp_secret)
    now = int(timezone.now().timestamp())
    for drift in (0, -1, 1):
        at = now + drift * TOTP_STEP
        try:
            totp.verify(code.encode(), at)
        except InvalidToken:
            continue
        step = at // TOTP_STEP
        updated = User.objects.filter(pk=user.pk, totp_last_step__lt=step).update(
            totp_last_step=step
        )
        if not updated:
            raise DomainError("totp_invalid", "This code was already used; wait for the next one.")
        user.totp_last_step = step
        return
    raise DomainError("totp_invalid")


# --- Console sign-in (password, then TOTP for doctors and pharmacists) --------------------

CONSOLE_ROLES = frozenset(
    {Role.DOCTOR, Role.PHARMACIST, Role.PHARMACY_STAFF, Role.REGULATOR, Role.ADMINISTRATOR}
)


def _lock_key(username: str) -> str:
    return f"console-login-failures:{_sha256(username.lower())}"


def _sign_in_failures(username: str) -> int:
    failures: int = cache.get(_lock_key(username), 0)
    if failures >= settings.CONSOLE_LOGIN_MAX_FAILURES:
        raise DomainError("account_locked")
    return failures


def _sign_in_failed(username: str, failures: int) -> None:
    cache.set(_lock_key(username), failures + 1, settings.CONSOLE_LOGIN_LOCK_SECONDS)


def console_password_check(
    *, username: str, password: str, meta: RequestMeta | None = None
) -> User:
    """First step of console sign-in. Wrong passwords and wrong second-factor codes count
    together against the username, which is locked for a while after too many."""
    failures = _sign_in_failures(username)
    user = authenticate(username=username, password=password)
    if user is None or not isinstance(user, User) or user.role not in CONSOLE_ROLES:
        _sign_in_failed(username, failures)
        audit_record(
            action="auth.console_login_failed",
            object_type="account",
            after={"username": username[:150]},
            meta=meta,
        )
        raise DomainError("authentication_failed", "Wrong username or password.")
    if failures and not user.needs_second_factor:
        cache.delete(_lock_key(username))
    return user


def console_second_factor_check(*, user: User, code: str, meta: RequestMeta | None = None) -> None:
    failures = _sign_in_failures(user.username)
    try:
        totp_verify(user=user, code=code)
    except DomainError:
        _sign_in_failed(user.username, failures)
        audit_record(
            action="auth.totp_failed",
            actor=user,
            object_type="account",
            object_id=user.pk,
            meta=meta,
        )
        raise
    if failures:  # a trip to the cache only when there is a count to clear
        cache.delete(_lock_key(user.username))


# --- WebSocket tickets -----------------------------------------------------------------------


@dataclass(frozen=True)
class IssuedTicket:
    ticket: str
    path: str
    expires_at: dt.datetime


def ws_ticket_issue(*, user: User, path: str) -> IssuedTicket:
    ticket = secrets.token_urlsafe(32)
    now = timezone.now()
    expires_at = now + dt.timedelta(seconds=settings.WS_TICKET_TTL_SECONDS)
    WsTicket.objects.create(
        ticket_hash=_sha256(ticket), user=user, path=path, created_at=now, expires_at=expires_at
    )
    return IssuedTicket(ticket=ticket, path=path, expires_at=expires_at)


def ws_ticket_redeem(*, ticket: str, path: str) -> User | None:
    """Use a ticket for the connection to ``path``: once, before it expires, for the path
    it was issued for. Returns the account, or None."""
    now = timezone.now()
    ticket_hash = _sha256(ticket)
    updated = WsTicket.objects.filter(
        ticket_hash=ticket_hash, used_at__isnull=True, expires_at__gt=now, path=path
    ).update(used_at=now)
    if updated != 1:
        return None
    row = WsTicket.objects.select_related("user").get(ticket_hash=ticket_hash)
    return row.user if row.user.is_active else None


def credentials_purge_expired() -> dict[str, int]:
    now = timezone.now()
    tickets, _ = WsTicket.objects.filter(expires_at__lt=now - dt.timedelta(hours=1)).delete()
    otps, _ = OtpChallenge.objects.filter(expires_at__lt=now - dt.timedelta(days=2)).delete()
    refresh, _ = RefreshToken.objects.filter(expires_at__lt=now).delete()
    return {"ws_tickets": tickets, "otp_challenges": otps, "refresh_tokens": refresh}


def account_update(
    *, user: User, display_name: str | None = None, meta: RequestMeta | None = None
) -> User:
    before = {"display_name": user.display_name}
    if display_name is not None:
        user.display_name = display_name.strip()
    with transaction.atomic():
        user.save(update_fields=["display_name"])
        audit_record(
            action="account.updated",
            actor=user,
            object_type="account",
            object_id=user.pk,
            before=before,
            after={"display_name": user.display_name},
            meta=meta,
        )
    return user
