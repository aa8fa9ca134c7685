from __future__ import annotations

import os
from typing import Any

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from tests.factories import (
    DepartmentFactory,
    HospitalFactory,
    PatientFactory,
    PractitionerFactory,
)

#: The console's browser-test fixtures (server, browser, shots, orm_beside_playwright).
pytest_plugins = ["tests.console_browser_fixtures"]

REQUIRE_SERVICES = os.environ.get("REQUIRE_SERVICES") == "1"


def pytest_sessionstart(session: pytest.Session) -> None:
    if not REQUIRE_SERVICES:
        return
    engine = settings.DATABASES["default"]["ENGINE"]
    problems = []
    if "postgresql" not in engine:
        problems.append(f"DATABASE_URL must point at PostgreSQL (engine is {engine})")
    if not settings.REDIS_URL:
        problems.append("REDIS_URL must be set")
    if problems:
        raise pytest.UsageError("REQUIRE_SERVICES=1 but " + "; ".join(problems))


def require_redis() -> str:
    """The Redis URL for a test that needs a real Redis; skip or fail without one."""
    if settings.REDIS_URL:
        return settings.REDIS_URL
    if REQUIRE_SERVICES:
        pytest.fail("REQUIRE_SERVICES=1 but REDIS_URL is not set")
    pytest.skip("needs Redis: set REDIS_URL (CI sets REQUIRE_SERVICES=1)")


def uses_postgres() -> bool:
    return "postgresql" in settings.DATABASES["default"]["ENGINE"]


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture(autouse=True)
def _clear_cache() -> None:
    """Empty this worker's cache (rate-limit counters). On Redis only this worker's keys
    go: ``cache.clear()`` would flush the database under the other xdist workers."""
    from django.core.cache import cache

    if settings.CACHES["default"]["BACKEND"].endswith("RedisCache"):
        client = cache._cache.get_client(write=True)  # type: ignore[attr-defined]
        prefix = settings.CACHES["default"]["KEY_PREFIX"]
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            client.delete(key)
    else:
        cache.clear()


@pytest.fixture
def hospital() -> Any:
    return HospitalFactory()


@pytest.fixture
def department(hospital: Any) -> Any:
    return DepartmentFactory(hospital=hospital)


@pytest.fixture
def doctor(hospital: Any, department: Any) -> Any:
    return PractitionerFactory(hospital=hospital, department=department).user


@pytest.fixture
def patient() -> Any:
    return PatientFactory()


@pytest.fixture
def icd10() -> None:
    """The ICD-10 table. The migration loads it, but a transactional test's flush empties
    every table, so tests that need it ask for it (use with a django_db mark)."""
    from consultations.icd10 import icd10_load
    from consultations.models import Icd10Code

    if not Icd10Code.objects.filter(code="I10").exists():
        icd10_load(model=Icd10Code)


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings: Any) -> None:
    """Factories give every account a password; a cheap hasher keeps tests fast. (What is
    tested about passwords is who may sign in, not the hasher's cost.)"""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(scope="session", autouse=True)
def _close_connection_pool(django_db_setup: Any, django_db_blocker: Any) -> Any:
    """Close PostgreSQL's connection pool (its connections outlive the threads that used
    them) before the test database is dropped, so the drop is not refused; and end the
    sessions that threads of this process still hold on it (the chat consumer's writer
    threads keep their connections, as they do in production, and asgiref's shared
    thread keeps what an async test's ``sync_to_async`` calls opened)."""
    yield
    from django.db import connections

    with django_db_blocker.unblock():
        default = connections["default"]
        if default.vendor == "postgresql":
            with default.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
        connections.close_all()
        for conn in connections.all():
            close_pool = getattr(conn, "close_pool", None)
            if close_pool is not None:
                close_pool()
