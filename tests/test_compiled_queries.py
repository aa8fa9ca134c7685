"""Compiled read queries give what the ORM queryset gives, on both databases."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import pytest
from django.db import connection, transaction
from django.db.transaction import TransactionManagementError
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from backend.compiled_queries import CompiledQuery
from backend.identity.models import User
from backend.organisations.models import Practitioner
from tests.conftest import uses_postgres
from tests.factories import DepartmentFactory, HospitalFactory, PractitionerFactory

pytestmark = pytest.mark.django_db(transaction=True)

_PRACTITIONER = CompiledQuery(
    lambda p: (
        Practitioner.objects.select_related("user", "hospital", "department")
        .filter(user=p.user, kind=p.kind)
        .order_by("pk")[:1]
    ),
    user=Practitioner._meta.get_field("user"),
    kind=Practitioner._meta.get_field("kind"),
)
_FILED_SINCE = CompiledQuery(
    lambda p: (
        Practitioner.objects.filter(hospital=p.hospital, filed_at__gte=p.since)
        .order_by("practice_certificate_number")
        .values_list("practice_certificate_number", flat=True)
    ),
    hospital=Practitioner._meta.get_field("hospital"),
    since=Practitioner._meta.get_field("filed_at"),
)
_PAIRS = CompiledQuery(
    lambda p: (
        Practitioner.objects.filter(hospital_id=p.hospital)
        .order_by("practice_certificate_number")
        .values_list("practice_certificate_number", "department_id")
    ),
    hospital=Practitioner._meta.get_field("hospital"),
)
_LOCKED = CompiledQuery(
    lambda p: Practitioner.objects.select_for_update().filter(pk=p.id),
    id=Practitioner._meta.pk,
)


def _same(a: Practitioner, b: Practitioner) -> None:
    assert type(a) is type(b)
    for field in Practitioner._meta.concrete_fields:
        assert getattr(a, field.attname) == getattr(b, field.attname), field.name
    assert a._state.adding is False
    assert a._state.db == b._state.db


def test_a_compiled_query_returns_the_rows_and_joins_the_orm_returns() -> None:
    hospital = HospitalFactory()
    with_department = PractitionerFactory(
        hospital=hospital,
        department=DepartmentFactory(hospital=hospital),
        id_number="330102198001011234",
    )
    without = PractitionerFactory(
        hospital=hospital, department=None, id_number="110101199002023456"
    )

    for practitioner in (with_department, without):
        found = _PRACTITIONER.first(user=practitioner.user, kind=practitioner.kind)
        expected = (
            Practitioner.objects.select_related("user", "hospital", "department")
            .filter(user=practitioner.user, kind=practitioner.kind)
            .first()
        )
        assert found is not None
        assert expected is not None
        _same(found, expected)
        # The encrypted identity number is decrypted by the field's converter.
        assert found.id_number == practitioner.id_number != ""
        # select_related rows are populated, a missing one is None without a query.
        with CaptureQueriesContext(connection) as queries:
            assert found.user.username == practitioner.user.username
            assert found.hospital.name == hospital.name
            if practitioner is without:
                assert found.department is None
            else:
                assert found.department is not None
                assert found.department.name == with_department.department.name
        assert queries.captured_queries == []

    # Values are bound at call time: another user, another kind, nothing found.
    assert _PRACTITIONER.first(user=without.user, kind="pharmacist") is None
    assert _PRACTITIONER.first(user=str(with_department.user.pk), kind="doctor") is not None


def test_values_lists_and_datetime_parameters_convert_like_lookups() -> None:
    hospital = HospitalFactory()
    now = timezone.now()
    early = PractitionerFactory(hospital=hospital, practice_certificate_number="A-1")
    late = PractitionerFactory(hospital=hospital, practice_certificate_number="B-2")
    PractitionerFactory(practice_certificate_number="C-3")  # another hospital
    Practitioner.objects.filter(pk=early.pk).update(filed_at=now - dt.timedelta(days=2))
    Practitioner.objects.filter(pk=late.pk).update(filed_at=now)

    assert _FILED_SINCE.all(hospital=hospital, since=now - dt.timedelta(days=3)) == [
        "A-1",
        "B-2",
    ]
    assert _FILED_SINCE.all(hospital=hospital.pk, since=now - dt.timedelta(hours=1)) == ["B-2"]
    assert _PAIRS.all(hospital=hospital) == [
        ("A-1", early.department_id),
        ("B-2", late.department_id),
    ]


def test_each_run_is_one_logged_statement() -> None:
    practitioner = PractitionerFactory()
    _PRACTITIONER.first(user=practitioner.user, kind=practitioner.kind)  # compiled here
    with CaptureQueriesContext(connection) as queries:
        _PRACTITIONER.first(user=practitioner.user, kind=practitioner.kind)
    assert len(queries.captured_queries) == 1
    assert 'FROM "organisations_practitioner"' in queries.captured_queries[0]["sql"]


def test_a_locking_query_still_needs_a_transaction() -> None:
    practitioner = PractitionerFactory()
    with transaction.atomic():
        assert [p.pk for p in _LOCKED.all(id=practitioner.pk)] == [practitioner.pk]
    with pytest.raises(TransactionManagementError):
        _LOCKED.all(id=practitioner.pk)


def test_bad_declarations_and_calls_are_refused() -> None:
    with pytest.raises(TypeError, match="missing parameter"):
        _PRACTITIONER.first(user=User())
    prefetching = CompiledQuery(
        lambda p: Practitioner.objects.prefetch_related("user").filter(pk=p.id),
        id=Practitioner._meta.pk,
    )
    with pytest.raises(ValueError, match="cannot prefetch"):
        prefetching.all(id=1)
    undeclared = CompiledQuery(lambda p: Practitioner.objects.filter(pk=p.other))
    with pytest.raises(AttributeError, match="no parameter 'other'"):
        undeclared.all()


def test_threads_share_the_compiled_query_and_run_on_their_own_connections() -> None:
    practitioners = [PractitionerFactory() for _ in range(4)]
    found: dict[int, Any] = {}

    def read(k: int) -> None:
        try:
            p = practitioners[k]
            found[k] = _PRACTITIONER.first(user=p.user, kind=p.kind)
        finally:
            connection.close()

    threads = [threading.Thread(target=read, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [found[k].pk for k in range(4)] == [p.pk for p in practitioners]


@pytest.mark.skipif(not uses_postgres(), reason="prepared statements are PostgreSQL's")
def test_postgresql_prepares_a_statement_run_again_on_a_connection() -> None:
    practitioner = PractitionerFactory()
    with transaction.atomic():  # one connection from the pool for the whole test
        for _ in range(3):
            _PRACTITIONER.first(user=practitioner.user, kind=practitioner.kind)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_prepared_statements "
                "WHERE statement LIKE %s AND statement LIKE %s",
                ['%FROM "organisations_practitioner"%', "%$1%"],
            )
            (prepared,) = cursor.fetchone()
    assert prepared >= 1


def test_variants_are_made_once_per_key_each_with_its_own_joins() -> None:
    from backend.compiled_queries import CompiledVariants

    variants: CompiledVariants[tuple[str, ...], Practitioner] = CompiledVariants(
        lambda related: CompiledQuery(
            lambda p: (
                Practitioner.objects.select_related(*related) if related else Practitioner.objects
            ).filter(pk=p.id),
            id=Practitioner._meta.pk,
        )
    )
    assert variants[("hospital",)] is variants[("hospital",)]
    assert variants[()] is not variants[("hospital",)]
    practitioner = PractitionerFactory()
    (joined,) = variants[("hospital",)].all(id=practitioner.pk)
    (plain,) = variants[()].all(id=practitioner.pk)
    with CaptureQueriesContext(connection) as queries:
        assert joined.hospital.pk == practitioner.hospital_id
    assert queries.captured_queries == []
    with CaptureQueriesContext(connection) as queries:
        assert plain.hospital.pk == practitioner.hospital_id
    assert len(queries.captured_queries) == 1
