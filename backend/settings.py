"""Settings for the internet hospital backend, read from the environment.

One module for every deployment. It fails closed: outside demo mode (``DEMO_MODE=1``)
the process refuses to start without ``SECRET_KEY``, ``FIELD_ENCRYPTION_KEYS``,
``BLIND_INDEX_KEY`` and ``ALLOWED_HOSTS``. Demo mode generates its secrets once into
the git-ignored ``var/`` folder instead of shipping defaults.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path
from typing import Any

import dj_database_url
import django_stubs_ext
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

django_stubs_ext.monkeypatch()

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("VAR_DIR", BASE_DIR / "var"))


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {raw!r}")


def env_int(
    name: str,
    default: int,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    why: str = "",
) -> int:
    """An integer setting; ``minimum``/``maximum`` are limits the law or the design sets,
    which configuration may tighten but not pass (``why`` names the source)."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}") from exc
    source = f" ({why})" if why else ""
    if minimum is not None and value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}{source}, got {value}")
    if maximum is not None and value > maximum:
        raise ImproperlyConfigured(f"{name} must be at most {maximum}{source}, got {value}")
    return value


def env_list(name: str, default: list[str] | None = None) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return list(default or [])
    return [item.strip() for item in raw.split(",") if item.strip()]


DEMO_MODE = env_bool("DEMO_MODE")
DEBUG = env_bool("DEBUG")


def _demo_secrets() -> dict[str, str]:
    """Secrets for demo mode: generated on first use, kept under var/ (never in git)."""
    path = VAR_DIR / "demo-secrets.json"
    if path.exists():
        stored: dict[str, str] = json.loads(path.read_text())
        return stored
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    generated = {
        "SECRET_KEY": secrets.token_urlsafe(50),
        "FIELD_ENCRYPTION_KEYS": "demo1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "BLIND_INDEX_KEY": base64.b64encode(secrets.token_bytes(32)).decode(),
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(generated))
    tmp.chmod(0o600)
    try:
        # Another process may have won the race; keep the first file written.
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    stored = json.loads(path.read_text())
    return stored


_REQUIRED_SECRETS = ("SECRET_KEY", "FIELD_ENCRYPTION_KEYS", "BLIND_INDEX_KEY")
_missing = [name for name in _REQUIRED_SECRETS if not os.environ.get(name)]
if _missing and not DEMO_MODE:
    raise ImproperlyConfigured(
        "Refusing to start: missing required environment variables "
        + ", ".join(_missing)
        + ". Set them (see README, 'Production configuration') or set DEMO_MODE=1 "
        "for the local demo."
    )
_demo = _demo_secrets() if _missing else {}

SECRET_KEY: str = os.environ.get("SECRET_KEY") or _demo["SECRET_KEY"]
FIELD_ENCRYPTION_KEYS: str = (
    os.environ.get("FIELD_ENCRYPTION_KEYS") or _demo["FIELD_ENCRYPTION_KEYS"]
)
BLIND_INDEX_KEY: str = os.environ.get("BLIND_INDEX_KEY") or _demo["BLIND_INDEX_KEY"]

if not DEMO_MODE and len(SECRET_KEY) < 32:
    raise ImproperlyConfigured("SECRET_KEY must be at least 32 characters long.")

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEMO_MODE else [])
if not ALLOWED_HOSTS:
    raise ImproperlyConfigured(
        "Refusing to start: ALLOWED_HOSTS is empty. List the host names this server answers to."
    )
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")
CSRF_FAILURE_VIEW = "backend.api.middleware.csrf_failure"

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    # Shared kernel
    "backend.api",
    "backend.crypto",
    "backend.audit",
    "backend.identity",
    "backend.organisations",
    "backend.patients",
    "backend.notifications",
    "backend.pki",
    "backend.demo",
    # Bounded contexts and edges
    "consultations",
    "prescriptions",
    "regulators",
    "payments",
    "mobile_api",
    "console",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "backend.api.middleware.ProblemJsonMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "backend.identity.sessions.SessionRefreshMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "backend.urls"
ASGI_APPLICATION = "backend.asgi.application"
WSGI_APPLICATION = "backend.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "backend" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------
DATABASE_URL = os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
if DATABASE_URL.startswith("sqlite"):
    VAR_DIR.mkdir(parents=True, exist_ok=True)
#: Seconds a connection is kept between requests. SQLite keeps its connections by default:
#: opening one runs the WAL pragmas below, which cost more than a chat message's writes.
#: PostgreSQL takes its connections from the pool instead (DATABASE_POOL).
_SQLITE = DATABASE_URL.startswith("sqlite")
DATABASES: dict[str, Any] = {
    "default": dj_database_url.parse(
        DATABASE_URL,
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 600 if _SQLITE else 0),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web process read while the worker writes; wait instead of failing.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # Tests use a file too, not SQLite's in-memory database: its shared-cache locks fail
    # at once instead of waiting, which is not how the embedded default behaves.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and env_bool(
    "DATABASE_POOL", True
):
    # A connection pool per process (Django 5.1+): WebSocket consumers and views reuse
    # connections instead of opening one per database call.
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 1,
        "max_size": env_int("DATABASE_POOL_MAX_SIZE", 24),
        "timeout": 10,
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and env_bool(
    "DATABASE_PREPARED_STATEMENTS", True
):
    # Parameters bound by the server, and a statement run twice on a connection is
    # prepared (psycopg): PostgreSQL then skips parsing and planning it. This halves the
    # database's CPU on the prescription path (docs/prescription-signing.md). Set 0 behind
    # a pooler that cannot keep prepared statements (PgBouncer in transaction mode < 1.21).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        server_side_binding=True, prepare_threshold=2
    )
#: Threads that run the sync part of HTTP requests under Daphne (backend/http_threads.py):
#: at most this many sync views at once, on threads reused from request to request.
HTTP_SYNC_THREADS = env_int("HTTP_SYNC_THREADS", 8)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "identity.User"
#: Django's model backend and database sessions, each with its per-request read compiled
#: once (backend/identity/backends.py, backend/identity/session_store.py).
AUTHENTICATION_BACKENDS = ["backend.identity.backends.AccountBackend"]
SESSION_ENGINE = "backend.identity.session_store"

# --- Redis, channel layer, cache, Celery -------------------------------------------------
REDIS_URL = os.environ.get("REDIS_URL", "")
CHANNEL_LAYER_PREFIX = os.environ.get("CHANNEL_LAYER_PREFIX", "ih")
#: "core" (channels_redis.core.RedisChannelLayer) or "pubsub"
#: (channels_redis.pubsub.RedisPubSubChannelLayer); see docs/chat.md for the measurements.
CHANNEL_LAYER_KIND = os.environ.get("CHANNEL_LAYER", "pubsub")
if CHANNEL_LAYER_KIND not in {"core", "pubsub"}:
    raise ImproperlyConfigured("CHANNEL_LAYER must be 'core' or 'pubsub'")
if REDIS_URL:
    CHANNEL_LAYERS: dict[str, Any] = {
        "default": {
            "BACKEND": f"channels_redis.{CHANNEL_LAYER_KIND}.Redis"
            + ("PubSub" if CHANNEL_LAYER_KIND == "pubsub" else "")
            + "ChannelLayer",
            "CONFIG": {"hosts": [REDIS_URL], "prefix": CHANNEL_LAYER_PREFIX}
            | ({"capacity": 1000} if CHANNEL_LAYER_KIND == "core" else {}),
        }
    }
    CACHES: dict[str, Any] = {
        "default": {
            "BACKEND": "backend.redis_pool.SharedClientRedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": os.environ.get("CACHE_KEY_PREFIX", "ih"),
            # One pool and one client per process, not per request (backend/redis_pool.py).
            "OPTIONS": {"pool_class": "backend.redis_pool.SharedConnectionPool"},
        }
    }
else:
    # Channels' in-memory layer, sweeping expired entries once a second instead of on
    # every message, and keeping a socket in its groups for as long as it is open
    # (backend/channel_layer.py).
    CHANNEL_LAYERS = {"default": {"BACKEND": "backend.channel_layer.SweepingInMemoryChannelLayer"}}
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

CELERY_DATA_DIR = VAR_DIR / "celery"
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL") or REDIS_URL or "filesystem://"
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND") or (
    REDIS_URL or f"file://{CELERY_DATA_DIR / 'results'}"
)
if CELERY_BROKER_URL == "filesystem://":
    # The embedded worker mode: a real Celery worker whose queue is a folder, so the
    # demo needs no broker service. Production sets REDIS_URL (or CELERY_BROKER_URL).
    for sub in ("queue", "processed", "results", "control"):
        (CELERY_DATA_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS: dict[str, Any] = {
        "data_folder_in": str(CELERY_DATA_DIR / "queue"),
        "data_folder_out": str(CELERY_DATA_DIR / "queue"),
        "processed_folder": str(CELERY_DATA_DIR / "processed"),
        "control_folder": str(CELERY_DATA_DIR / "control"),
        "store_processed": False,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
if CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    # Kombu's Redis transport, reusing one client per channel (backend/kombu_redis.py).
    CELERY_BROKER_TRANSPORT = "backend.kombu_redis:Transport"
CELERY_TASK_ACKS_LATE = True
#: The queue tasks go to (tests give each process its own, so workers never share).
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_DEFAULT_QUEUE", "celery")
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_EXPIRES = 3600
CELERY_TIMEZONE = "Asia/Shanghai"
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE: dict[str, Any] = {
    "purge-expired-credentials": {
        "task": "backend.identity.tasks.purge_expired_credentials",
        "schedule": 600.0,
    },
    "expire-unanswered-consultations": {
        "task": "consultations.tasks.expire_unanswered_consultations",
        "schedule": 60.0,
    },
    "purge-stale-presence": {
        "task": "backend.notifications.tasks.purge_stale_presence",
        "schedule": 600.0,
    },
    "expire-prescriptions": {
        "task": "prescriptions.tasks.expire_prescriptions",
        "schedule": 60.0,
    },
    "release-idle-claims": {
        "task": "prescriptions.tasks.release_idle_claims",
        "schedule": 60.0,
    },
    "sweep-regulator-outbox": {
        "task": "regulators.tasks.sweep_outbox",
        "schedule": float(os.environ.get("REGULATOR_SWEEP_SECONDS", "5")),
    },
    "sweep-payments": {
        "task": "payments.tasks.sweep",
        "schedule": 30.0,
    },
    "reconcile-payments": {
        "task": "payments.tasks.reconcile_yesterday",
        "schedule": crontab(hour=3, minute=30),
    },
    "check-upload-delays": {
        "task": "regulators.tasks.check_upload_delays",
        "schedule": 60.0,
    },
    "purge-expired-idempotency-keys": {
        "task": "backend.api.tasks.purge_expired_idempotency_keys",
        "schedule": 3600.0,
    },
}

# --- Internationalisation -----------------------------------------------------------------
LANGUAGE_CODE = "zh-hans"
LANGUAGES = [("zh-hans", "简体中文"), ("en", "English")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "Asia/Shanghai"
USE_I18N = True
USE_TZ = True

# --- Static files ----------------------------------------------------------------------
STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}
MEDIA_ROOT = Path(os.environ.get("MEDIA_ROOT", VAR_DIR / "media"))

# --- Security --------------------------------------------------------------------------
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_AGE = env_int("CONSOLE_SESSION_IDLE_SECONDS", 30 * 60)
# Idle timeout: a request extends the session, writing it at most every
# SESSION_REFRESH_SECONDS (backend/identity/sessions.py), not on every request.
SESSION_SAVE_EVERY_REQUEST = False
SESSION_REFRESH_SECONDS = env_int("CONSOLE_SESSION_REFRESH_SECONDS", 30)
CSRF_COOKIE_HTTPONLY = False
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
if env_bool("TRUST_X_FORWARDED_PROTO"):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
if not DEMO_MODE and not DEBUG:
    SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", True)
    CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", True)
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {
        "NAME": "django.contrib.auth.password_validation.MinimumLengthValidator",
        "OPTIONS": {"min_length": 10},
    },
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# --- Identity and credentials ----------------------------------------------------------
OTP_TTL_SECONDS = env_int("OTP_TTL_SECONDS", 300)
OTP_MAX_ATTEMPTS = env_int("OTP_MAX_ATTEMPTS", 5)
OTP_RESEND_SECONDS = env_int("OTP_RESEND_SECONDS", 60)
OTP_MAX_PER_PHONE_PER_DAY = env_int("OTP_MAX_PER_PHONE_PER_DAY", 10)
JWT_ACCESS_TTL_SECONDS = min(env_int("JWT_ACCESS_TTL_SECONDS", 900), 900)
JWT_REFRESH_TTL_SECONDS = env_int("JWT_REFRESH_TTL_SECONDS", 30 * 24 * 3600)
JWT_ISSUER = os.environ.get("JWT_ISSUER", "internet-hospital")
WS_TICKET_TTL_SECONDS = env_int(
    "WS_TICKET_TTL_SECONDS", 60, minimum=1, maximum=60, why="CONTRACT 1: valid 60 s"
)
CONSOLE_LOGIN_MAX_FAILURES = env_int("CONSOLE_LOGIN_MAX_FAILURES", 5)
CONSOLE_LOGIN_LOCK_SECONDS = env_int("CONSOLE_LOGIN_LOCK_SECONDS", 900)
SMS_BACKEND = os.environ.get(
    "SMS_BACKEND", "backend.identity.sms.LoggingSmsBackend" if DEMO_MODE else ""
)
SMS_HTTP_URL = os.environ.get("SMS_HTTP_URL", "")
SMS_HTTP_TOKEN = os.environ.get("SMS_HTTP_TOKEN", "")
if not SMS_BACKEND:
    raise ImproperlyConfigured(
        "Refusing to start: SMS_BACKEND is not set. Use backend.identity.sms.HttpSmsBackend "
        "with SMS_HTTP_URL for a real gateway (LoggingSmsBackend writes codes to the log)."
    )

IDENTITY_PROVIDER = os.environ.get(
    "IDENTITY_PROVIDER",
    "backend.organisations.identity_check.DemoIdentityProvider" if DEMO_MODE else "",
)
if not IDENTITY_PROVIDER:
    raise ImproperlyConfigured(
        "Refusing to start: IDENTITY_PROVIDER is not set (the doctors' real-name check). "
        "Name a class implementing backend.organisations.identity_check.IdentityProvider."
    )

PUSH_BACKEND = os.environ.get(
    "PUSH_BACKEND", "backend.notifications.backends.LoggingPushBackend" if DEMO_MODE else ""
)
PUSH_HTTP_URL = os.environ.get("PUSH_HTTP_URL", "")
PUSH_HTTP_TOKEN = os.environ.get("PUSH_HTTP_TOKEN", "")
if not PUSH_BACKEND:
    raise ImproperlyConfigured(
        "Refusing to start: PUSH_BACKEND is not set. Use "
        "backend.notifications.backends.HttpPushBackend with PUSH_HTTP_URL."
    )
#: A socket whose last heartbeat is older than this counts as gone.
PRESENCE_TTL_SECONDS = env_int("PRESENCE_TTL_SECONDS", 90)

# --- Consultations ---------------------------------------------------------------------
CONSULTATION_EXPIRE_MINUTES = env_int("CONSULTATION_EXPIRE_MINUTES", 30)
#: 0: a doctor's identity check counts for the rest of that day (Asia/Shanghai);
#: otherwise its maximum age in seconds.
DOCTOR_IDENTITY_CHECK_MAX_AGE_SECONDS = env_int("DOCTOR_IDENTITY_CHECK_MAX_AGE_SECONDS", 0)
DOCTOR_MIN_PRACTICE_YEARS = env_int(
    "DOCTOR_MIN_PRACTICE_YEARS", 3, minimum=3, why="DOMAIN rule 1: at least 3 years"
)
UPLOAD_MAX_BYTES = env_int("UPLOAD_MAX_BYTES", 10 * 1024 * 1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 2_621_440)
CHAT_MAX_FRAME_BYTES = env_int("CHAT_MAX_FRAME_BYTES", 64 * 1024)
CHAT_MAX_TEXT_CHARS = env_int("CHAT_MAX_TEXT_CHARS", 4000)
CHAT_MAX_FRAMES_PER_SECOND = env_int("CHAT_MAX_FRAMES_PER_SECOND", 20)
CHAT_DB_THREADS = env_int("CHAT_DB_THREADS", 16)

# --- Signatures and prescriptions --------------------------------------------------------
#: Algorithm of new CAs and certificates: ecdsa-p256-sha256 (default) or ed25519.
SIGNING_ALGORITHM = os.environ.get("SIGNING_ALGORITHM", "ecdsa-p256-sha256")
SIGNING_CERT_VALIDITY_DAYS = env_int("SIGNING_CERT_VALIDITY_DAYS", 365)
#: How long after the second factor a signing act may still sign (one signature).
SIGNING_ACT_MAX_AGE_SECONDS = env_int("SIGNING_ACT_MAX_AGE_SECONDS", 60)
#: Where personal signing keys live; a hospital CA signing service plugs in here.
SIGNER_BACKEND = os.environ.get("SIGNER_BACKEND", "backend.pki.services.LocalSigner")
#: The treating doctor may still prescribe this long after the consultation ended.
PRESCRIPTION_GRACE_MINUTES = env_int("PRESCRIPTION_GRACE_MINUTES", 60)
# The legal limits below may be tightened by a hospital, never loosened: a value past the
# law's is refused at start (DOMAIN.md rules 8 and 9).
#: Longest validity the doctor may give (处方管理办法 第18条: at most 3 days).
PRESCRIPTION_MAX_VALIDITY_DAYS = env_int(
    "PRESCRIPTION_MAX_VALIDITY_DAYS", 3, minimum=1, maximum=3, why="处方管理办法 第18条"
)
#: Normal supply limit (处方管理办法 第19条: 7 days), and the limit for a stable chronic
#: disease with a reason (长期处方管理规范: 12 weeks).
PRESCRIPTION_MAX_DAYS = env_int(
    "PRESCRIPTION_MAX_DAYS", 7, minimum=1, maximum=7, why="处方管理办法 第19条"
)
PRESCRIPTION_MAX_CHRONIC_DAYS = env_int(
    "PRESCRIPTION_MAX_CHRONIC_DAYS",
    84,
    minimum=PRESCRIPTION_MAX_DAYS,
    maximum=84,
    why="长期处方管理规范: 12 weeks, and not under PRESCRIPTION_MAX_DAYS",
)
#: Age (years) under which a guardian and a specialist must be recorded (rule 8: 6; a
#: hospital may ask it for older children too).
PRESCRIPTION_CHILD_AGE = env_int(
    "PRESCRIPTION_CHILD_AGE", 6, minimum=6, maximum=18, why="互联网诊疗管理办法 第19条"
)
#: A pharmacy's claim with no activity for this long goes back to active.
PRESCRIPTION_CLAIM_IDLE_MINUTES = env_int("PRESCRIPTION_CLAIM_IDLE_MINUTES", 120)
#: Wrong access codes allowed per window, per pharmacy and per prescription.
ACCESS_CODE_WINDOW_SECONDS = env_int("ACCESS_CODE_WINDOW_SECONDS", 900)
ACCESS_CODE_MAX_FAILURES_PER_PHARMACY = env_int("ACCESS_CODE_MAX_FAILURES_PER_PHARMACY", 20)
ACCESS_CODE_MAX_FAILURES_PER_PRESCRIPTION = env_int("ACCESS_CODE_MAX_FAILURES_PER_PRESCRIPTION", 5)

# --- Regulator reporting ------------------------------------------------------------------
#: A record unacknowledged for this long raises an upload-delay alert (DOMAIN rule 15).
REGULATOR_UPLOAD_DELAY_ALERT_SECONDS = env_int("REGULATOR_UPLOAD_DELAY_ALERT_SECONDS", 300)
REGULATOR_RETRY_BASE_SECONDS = env_int("REGULATOR_RETRY_BASE_SECONDS", 2)
REGULATOR_RETRY_MAX_SECONDS = env_int("REGULATOR_RETRY_MAX_SECONDS", 600)
#: How long a worker holds a record it is sending; a killed worker's lease runs out.
REGULATOR_DELIVERY_LEASE_SECONDS = env_int("REGULATOR_DELIVERY_LEASE_SECONDS", 60)
#: A worker leases up to this many records at a time and drains for at most this long
#: before a fresh task carries on (docs/reporting.md).
REGULATOR_DRAIN_BATCH = env_int("REGULATOR_DRAIN_BATCH", 50)
REGULATOR_DRAIN_SECONDS = env_int("REGULATOR_DRAIN_SECONDS", 10)
#: A web process queues at most one drain per this many milliseconds, however many
#: records its requests append (regulators.services.Doorbell).
REGULATOR_DOORBELL_SECONDS = env_int("REGULATOR_DOORBELL_MS", 50) / 1000
#: A worker stops sending to a province after a connection error or timeout, or this many
#: retryable answers in a row, and probes again after a pause doubling up to the maximum.
REGULATOR_BREAKER_FAILURES = env_int("REGULATOR_BREAKER_FAILURES", 10)
REGULATOR_BREAKER_MAX_SECONDS = env_int("REGULATOR_BREAKER_MAX_SECONDS", 2)
#: The bundled provincial platform peer the demo starts (see peers/regulator).
REGULATOR_PEER_PORT = env_int("REGULATOR_PEER_PORT", 8701)

# --- Video calls --------------------------------------------------------------------------
#: STUN/TURN servers handed to the console's WebRTC calls, as the browser's RTCIceServer
#: list in JSON, e.g. [{"urls": "stun:stun.hospital.cn:3478"}, {"urls": "turn:...",
#: "username": "...", "credential": "..."}]. Empty: calls connect only where the two
#: devices reach each other directly.
try:
    WEBRTC_ICE_SERVERS: list[dict[str, Any]] = json.loads(
        os.environ.get("WEBRTC_ICE_SERVERS", "[]")
    )
except ValueError as exc:
    raise ImproperlyConfigured(f"WEBRTC_ICE_SERVERS is not JSON: {exc}") from exc
if not isinstance(WEBRTC_ICE_SERVERS, list) or not all(
    isinstance(server, dict) and "urls" in server for server in WEBRTC_ICE_SERVERS
):
    raise ImproperlyConfigured('WEBRTC_ICE_SERVERS must be a JSON list of {"urls": ...} objects')

# --- Payments ----------------------------------------------------------------------------
#: An attempt (or refund) we heard nothing of for this long is queried at its gateway.
PAYMENT_QUERY_AFTER_SECONDS = env_int("PAYMENT_QUERY_AFTER_SECONDS", 60)
#: The share of the self-pay part refunded when a consultation is referred offline.
PAYMENT_REFER_OFFLINE_REFUND_PERCENT = env_int("PAYMENT_REFER_OFFLINE_REFUND_PERCENT", 100)
if not 0 <= PAYMENT_REFER_OFFLINE_REFUND_PERCENT <= 100:
    raise ImproperlyConfigured("PAYMENT_REFER_OFFLINE_REFUND_PERCENT must be 0-100")
#: The delivery fee of a prescription order delivered to the patient's home.
PRESCRIPTION_DELIVERY_FEE = env_int("PRESCRIPTION_DELIVERY_FEE", 1000)
#: The bundled payment peer the demo starts (see peers/payment).
PAYMENT_PEER_PORT = env_int("PAYMENT_PEER_PORT", 8702)

# --- HTTP API --------------------------------------------------------------------------
IDEMPOTENCY_KEY_TTL_SECONDS = env_int("IDEMPOTENCY_KEY_TTL_SECONDS", 24 * 3600)
REST_FRAMEWORK: dict[str, Any] = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "backend.identity.authentication.JwtAuthentication",
        "backend.identity.authentication.ApiTokenAuthentication",
        "backend.identity.authentication.ConsoleSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": [
        "rest_framework.parsers.JSONParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "backend.api.pagination.CursorPage",
    "PAGE_SIZE": 20,
    "EXCEPTION_HANDLER": "backend.api.problems.problem_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "backend.api.schema.AutoSchema",
    "DEFAULT_THROTTLE_RATES": {
        "otp_phone": "1/min",
        "otp_ip": "20/hour",
        "token_ip": "60/hour",
        "console_login": "30/hour",
    },
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}
SPECTACULAR_SETTINGS: dict[str, Any] = {
    "TITLE": "Internet hospital API",
    "DESCRIPTION": (
        "Follow-up consultations, signed e-prescriptions, payments and regulator reporting. "
        "Errors are application/problem+json with a stable `code`; lists use cursor "
        "pagination; every mutating call accepts an `Idempotency-Key` header."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "ENUM_NAME_OVERRIDES": {
        "PrescriptionStatusEnum": "prescriptions.models.PrescriptionStatus",
    },
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/[a-z]+/v[0-9]+",
}

# --- Logging ---------------------------------------------------------------------------
LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")
LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
    },
}
