"""Read queries written with the ORM and compiled to SQL once, then run with new values.

Django builds and compiles a queryset's SQL on every evaluation: cloning the query,
resolving lookups and joins, naming every column and comparing expressions. On the
request paths that run a few dozen reads each (a prescription's sign, review, claim and
dispense; each request's session and account), that work costs more server CPU than the
statements themselves (``python -m bench.rx_bench``; docs/prescription-signing.md).

A ``CompiledQuery`` is declared once, at module level, as a function that builds the
queryset from named parameters, with the model field each parameter is compared with::

    _CONSULTATION = CompiledQuery(
        lambda p: Consultation.objects.select_related("profile").filter(pk=p.id)[:1],
        id=Consultation._meta.pk,
    )
    consultation = _CONSULTATION.first(id=consultation_id)

On first use on a database (per process), the function is called with placeholders, the
queryset is compiled by Django's own compiler, and the SQL, the positions of the
placeholders among its parameters, and the compiler's column layout are kept. Each later
call only converts the values (``Field.get_db_prep_value``, as a lookup would), runs the
statement through the connection's cursor (so the debug query log and query-count
assertions see it), and makes the rows into model instances, ``select_related`` rows
included, with the same converters and populators Django's ``ModelIterable`` uses.

What it refuses at compile time, because the result would differ from the queryset's:
``prefetch_related`` (prefetch on the instances returned), querysets of a related manager
(known related objects), extra/annotated ``values_list`` columns, and ``values()``.
A query with ``select_for_update`` still refuses to run outside a transaction.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Field, Model, QuerySet
from django.db.models.expressions import Expression
from django.db.models.query import (  # type: ignore[attr-defined]
    FlatValuesListIterable,
    ModelIterable,
    ValuesListIterable,
    get_related_populators,
)
from django.db.transaction import TransactionManagementError

T = TypeVar("T")
K = TypeVar("K")


class _Param(Expression):
    """A named placeholder: compiles to one ``%s`` whose value comes at call time."""

    def __init__(self, name: str, field: Field[Any, Any]) -> None:
        super().__init__(output_field=field)
        self.name = name

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list[Any]]:
        return "%s", [self]

    def __repr__(self) -> str:
        return f"<param {self.name}>"


class _Params:
    """What the builder receives: ``p.name`` is the placeholder of parameter ``name``."""

    def __init__(self, fields: dict[str, Field[Any, Any]]) -> None:
        self._fields = fields

    def __getattr__(self, name: str) -> _Param:
        try:
            return _Param(name, self._fields[name])
        except KeyError:
            raise AttributeError(f"no parameter {name!r} declared") from None


class _Compiled:
    """One query's SQL and row layout on one database."""

    def __init__(self, queryset: QuerySet[Any], connection: BaseDatabaseWrapper) -> None:
        query = queryset.query
        if queryset._prefetch_related_lookups:  # type: ignore[attr-defined]
            raise ValueError("a compiled query cannot prefetch; prefetch on its results")
        if queryset._known_related_objects:  # type: ignore[attr-defined]
            raise ValueError("a compiled query cannot start from a related manager")
        iterable = queryset._iterable_class
        if iterable not in (ModelIterable, ValuesListIterable, FlatValuesListIterable):
            raise ValueError(f"a compiled query cannot return {iterable.__name__} rows")
        if iterable is not ModelIterable and (query.extra_select or query.annotation_select):
            raise ValueError("a compiled values_list cannot name extra or annotated columns")
        compiler = query.get_compiler(connection=connection)
        sql, params = compiler.as_sql()
        self.sql: str = sql
        self.for_update = bool(query.select_for_update)
        #: (position in the parameters, parameter name) of each placeholder.
        self.slots = [(i, p.name) for i, p in enumerate(params) if isinstance(p, _Param)]
        self.fields: dict[str, Any] = {
            p.name: p.output_field for p in params if isinstance(p, _Param)
        }
        self.constants = [None if isinstance(p, _Param) else p for p in params]
        self.iterable = iterable
        select = compiler.select[0 : compiler.col_count]
        self.converters = [
            (i, (converters, expression))
            for i, (converters, expression) in compiler.get_converters(
                [s[0] for s in select]
            ).items()
        ]
        if iterable is ModelIterable:
            klass_info = compiler.klass_info
            self.model = klass_info["model"]
            fields = klass_info["select_fields"]
            self.start, self.end = fields[0], fields[-1] + 1
            self.init_list = [f[0].target.attname for f in compiler.select[self.start : self.end]]
            self.populators = get_related_populators(klass_info, compiler.select, connection.alias)
            self.annotations = dict(compiler.annotation_col_map)

    def run(self, connection: BaseDatabaseWrapper, values: dict[str, Any]) -> list[Any]:
        if self.for_update and connection.get_autocommit():
            raise TransactionManagementError(
                "select_for_update cannot be used outside of a transaction."
            )
        params = list(self.constants)
        for position, name in self.slots:
            value = values[name]
            if isinstance(value, Model):
                value = value.pk
            params[position] = self.fields[name].get_db_prep_value(
                value, connection, prepared=False
            )
        with connection.cursor() as cursor:
            cursor.execute(self.sql, params)
            rows: list[Any] = cursor.fetchall()
        if self.converters:
            rows = [list(row) for row in rows]
            for row in rows:
                for position, (converters, expression) in self.converters:
                    value = row[position]
                    for converter in converters:
                        value = converter(value, expression, connection)
                    row[position] = value
        if self.iterable is FlatValuesListIterable:
            return [row[0] for row in rows]
        if self.iterable is ValuesListIterable:
            return [tuple(row) for row in rows]
        alias = connection.alias
        found = []
        for row in rows:
            obj = self.model.from_db(alias, self.init_list, row[self.start : self.end])
            for populator in self.populators:
                populator.populate(row, obj)
            for name, position in self.annotations.items():
                setattr(obj, name, row[position])
            found.append(obj)
        return found


class CompiledQuery(Generic[T]):
    """A read query compiled once per database and process (see the module)."""

    def __init__(
        self,
        build: Callable[[Any], QuerySet[Any, T]],
        *,
        using: str = DEFAULT_DB_ALIAS,
        **fields: Field[Any, Any],
    ) -> None:
        self._build = build
        self._using = using
        self._fields = fields
        # Per database alias, shared by the process's threads: the SQL, the placeholders'
        # positions and the row layout depend on the database's settings, not on the
        # thread's connection (which each run uses, and passes to the converters).
        self._compiled: dict[str, _Compiled] = {}
        self._lock = threading.Lock()

    def _for(self, connection: BaseDatabaseWrapper) -> _Compiled:
        compiled = self._compiled.get(connection.alias)
        if compiled is None:
            with self._lock:
                compiled = self._compiled.get(connection.alias)
                if compiled is None:
                    compiled = _Compiled(self._build(_Params(self._fields)), connection)
                    self._compiled[connection.alias] = compiled
        return compiled

    def all(self, **values: Any) -> list[T]:
        """Every row, as the queryset would give them."""
        missing = self._fields.keys() - values.keys()
        if missing:
            raise TypeError(f"missing parameter(s): {', '.join(sorted(missing))}")
        connection = connections[self._using]
        return self._for(connection).run(connection, values)

    def first(self, **values: Any) -> T | None:
        """The first row or None (slice the queryset ``[:1]`` in the builder)."""
        rows = self.all(**values)
        return rows[0] if rows else None


class CompiledVariants(Generic[K, T]):
    """One ``CompiledQuery`` per key (the relations a caller reads with the row, say),
    each made on first use by ``make(key)``; keys are few and fixed in the code."""

    def __init__(self, make: Callable[[K], CompiledQuery[T]]) -> None:
        self._make = make
        self._made: dict[K, CompiledQuery[T]] = {}
        self._lock = threading.Lock()

    def __getitem__(self, key: K) -> CompiledQuery[T]:
        query = self._made.get(key)
        if query is None:
            with self._lock:
                query = self._made.setdefault(key, self._make(key))
        return query
