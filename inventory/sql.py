"""Statements of the hot paths, compiled by the ORM once per process and shape: compiling
them again on every request cost more than running them."""

import functools
import uuid

from django.db import connection
from django.db.models import F
from django.db.models.sql import UpdateQuery

from inventory.models import Item, Movement


@functools.cache
def movement_insert(vendor: str) -> tuple[str, str, tuple]:
    """The INSERT of movements: its head, the placeholders of one row, and the fields in
    their order (bulk_create() compiled it again on every write)."""
    fields = tuple(field for field in Movement._meta.concrete_fields if not field.primary_key)
    quote = connection.ops.quote_name
    columns = ", ".join(quote(field.column) for field in fields)
    head = f"INSERT INTO {quote(Movement._meta.db_table)} ({columns}) VALUES "  # noqa: S608 (names from the model)
    return head, "(" + ", ".join(["%s"] * len(fields)) + ")", fields


@functools.cache
def guarded_update(vendor: str, lower_bound: bool, compare: bool) -> tuple[str, tuple[str, ...]]:
    """The guarded UPDATE ... RETURNING of one shape, and the names of its parameters in
    order: `qty = qty + delta` where qty >= bound (a decrement) or qty <= bound (an
    increment), and, for a compare-and-set, qty = expected_qty. QuerySet.update() cannot
    return the new row, so RETURNING (SQLite 3.35+, PostgreSQL) is added to the compiled SQL."""
    marks = {"delta": 1_000_001, "bound": 1_000_002, "expected_qty": 1_000_003}
    item_id = uuid.UUID(int=1_000_004)
    guard = {"qty__gte" if lower_bound else "qty__lte": marks["bound"]}
    if compare:
        guard["qty"] = marks["expected_qty"]
    update = Item.objects.filter(pk=item_id, **guard).query.chain(UpdateQuery)
    update.add_update_values({"qty": F("qty") + marks["delta"]})
    sql, params = update.get_compiler(connection=connection).as_sql()
    names = {value: name for name, value in marks.items()}
    names[Item._meta.pk.get_db_prep_value(item_id, connection)] = "id"
    quote = connection.ops.quote_name
    return f"{sql} RETURNING {quote('name')}, {quote('qty')}", tuple(names[value] for value in params)


@functools.cache
def item_select(vendor: str) -> str:
    """SELECT name, qty of one item; its one parameter is the id."""
    query = Item.objects.filter(pk=uuid.UUID(int=0)).values_list("name", "qty").query
    sql, _ = query.get_compiler(connection=connection).as_sql()
    return sql
