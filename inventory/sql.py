"""Statements of the hot paths, written once per process: building them with the ORM on
every request cost more than running them. Each changes qty or reserved in one guarded
statement, never read-modify-write in Python; `RETURNING` needs SQLite 3.35+ or PostgreSQL."""

import datetime
import functools

from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.utils import dateparse

from inventory.models import HoldLine, Item

# The stored `reserved` counts no hold that has expired by now (a parameter).
EXACT = "(holds_expire_at IS NULL OR holds_expire_at > %s)"
# What every statement that changes an item returns, in this order (see item_from_row).
ITEM_COLUMNS = ("name", "qty", "reserved", "holds_expire_at", "low_stock_threshold")


def _names() -> dict:
    quote = connection.ops.quote_name
    return {
        "item": quote(Item._meta.db_table),
        "line": quote(HoldLine._meta.db_table),
        "columns": ", ".join(quote(column) for column in ITEM_COLUMNS),
    }


# Fields whose values reach the database as Python gives them (after the invariants checked
# them): preparing them through the field cost more than the INSERT itself.
_AS_GIVEN = {"CharField", "BigIntegerField", "IntegerField", "PositiveIntegerField", "BooleanField"}


@functools.cache
def _insert(vendor: str, model) -> tuple[str, str, str, tuple]:
    """The INSERT of a model's rows: its head, the placeholders of one row, the same with
    each value cast to its column's type (for a VALUES list that is not an INSERT's own),
    and per field its name and how to prepare its value (None: as given)."""
    fields = tuple(field for field in model._meta.concrete_fields if not field.primary_key)
    quote = connection.ops.quote_name
    columns = ", ".join(quote(field.column) for field in fields)
    head = f"INSERT INTO {quote(model._meta.db_table)} ({columns}) "
    prepare = tuple(
        (field.attname, None if field.get_internal_type() in _AS_GIVEN else field.get_db_prep_save)
        for field in fields
    )
    row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    cast_row = "(" + ", ".join(f"CAST(%s AS {field.db_type(connection)})" for field in fields) + ")"
    return head, row, cast_row, prepare


def _values(db, prepare: tuple, rows: list[dict], shared: dict) -> list:
    params = []
    for entry in rows:
        for name, prep in prepare:
            if name in shared:
                params.append(shared[name])
            else:
                value = entry[name]
                params.append(value if prep is None or value is None else prep(value, db))
    return params


def insert(db, model, rows: list[dict], *, commit: bool = False, **shared) -> None:
    """INSERT rows of model (dicts by field name) in one statement, in the caller's
    transaction on connection db; `shared` gives values that every row has, already as the
    database stores them (param()); `commit` as in execute(). bulk_create() compiled the
    statement again on every write."""
    head, row, _, prepare = _insert(db.vendor, model)
    statement = head + "VALUES " + ", ".join([row] * len(rows))
    execute(db, statement, _values(db, prepare, rows, shared), commit=commit)


def insert_locked(
    db, lock: int, model, rows: list[dict], *, first=(), commit: bool = False, **shared
) -> None:
    """PostgreSQL: in one statement, INSERT `first` (pairs of a model and its rows), take the
    transaction-scoped advisory lock `lock`, then INSERT rows of model; `shared` and `commit`
    as in insert().

    The lock is taken before any of model's rows is formed, so before their defaults (a
    sequence's next value) are drawn: the rows come from a join with a MATERIALIZED common
    table expression that takes the lock, and a join yields no row before it has read both
    sides; a default is computed for each row the join yields (PostgreSQL docs, "WITH
    Queries": a data-modifying statement in WITH runs once, to completion, whether or not
    its output is read)."""
    ctes, params = [], []
    for number, (first_model, first_rows) in enumerate(first):
        head, row, _, prepare = _insert(db.vendor, first_model)
        ctes.append(f"first{number} AS ({head}VALUES {', '.join([row] * len(first_rows))})")
        params += _values(db, prepare, first_rows, shared)
    ctes.append("locked AS MATERIALIZED (SELECT pg_advisory_xact_lock(%s))")
    params.append(lock)
    head, _, cast_row, prepare = _insert(db.vendor, model)
    values = ", ".join([cast_row] * len(rows))
    statement = f"WITH {', '.join(ctes)} {head}SELECT given.* FROM (VALUES {values}) AS given, locked"
    execute(db, statement, params + _values(db, prepare, rows, shared), commit=commit)


@functools.cache
def guarded_add(vendor: str, decrement: bool, compare: bool) -> str:
    """qty = qty + delta where the result stays in range and the stored `reserved` is exact
    (no counted hold has expired by now). Parameters: delta, id, now, bound, then expected_qty
    for a compare-and-set. A decrement's guard is `qty - reserved >= -delta` (never below what
    holds set aside), an increment's `qty <= QTY_MAX - delta`: written so that no intermediate
    value leaves the 64-bit range (SQLite would turn it into a REAL and PostgreSQL would raise).
    A row refused for an expired hold is collected first (inventory.reservations), so that the
    expiry's events come before this change's."""
    guard = "qty - reserved >= %s" if decrement else "qty <= %s"
    compare_and_set = " AND qty = %s" if compare else ""
    statement = f"UPDATE {{item}} SET qty = qty + %s WHERE id = %s AND {EXACT} AND {guard}{compare_and_set}"
    return (statement + " RETURNING {columns}").format(**_names())


@functools.cache
def guarded_reserve(vendor: str) -> str:
    """reserved = reserved + qty where qty - reserved >= qty of the line and the stored
    `reserved` is exact (as in guarded_add), and the earliest expiry of what reserved counts.
    Parameters: qty, expires_at, expires_at, id, now, qty."""
    return (
        "UPDATE {item} SET reserved = reserved + %s, holds_expire_at = CASE WHEN holds_expire_at IS NULL"
        " OR holds_expire_at > %s THEN %s ELSE holds_expire_at END"
        f" WHERE id = %s AND {EXACT} AND qty - reserved >= %s RETURNING {{columns}}"
    ).format(**_names())


@functools.cache
def take_reserved(vendor: str) -> str:
    """A committed line leaves: qty and reserved both fall by it (the constraint
    0 <= reserved <= qty keeps holding). Parameters: qty, qty, id."""
    return (
        "UPDATE {item} SET qty = qty - %s, reserved = reserved - %s WHERE id = %s RETURNING {columns}"
    ).format(**_names())


@functools.cache
def item_select(vendor: str, for_update: bool) -> str:
    """One item by id; FOR UPDATE locks its row on PostgreSQL (SQLite's writer holds the
    whole database already)."""
    lock = " FOR UPDATE" if for_update and vendor == "postgresql" else ""
    return "SELECT {columns} FROM {item} WHERE id = %s".format(**_names()) + lock


@functools.cache
def reserved_at(vendor: str) -> str:
    """What an item's lines reserve at an instant: those that still count and have not
    expired. Parameters: item id, now."""
    return (
        "SELECT COALESCE(SUM(qty), 0) FROM {line} WHERE item_id = %s AND reserving AND expires_at > %s"
    ).format(**_names())


def as_datetime(value) -> datetime.datetime | None:
    """A datetime as a raw cursor returns it: psycopg gives an aware datetime, SQLite a naive
    one (or text) in UTC, as Django stores it."""
    if value is None:
        return None
    if not isinstance(value, datetime.datetime):
        value = dateparse.parse_datetime(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=datetime.UTC)


def param(model, field: str, value, db=connection):
    """A value as the database stores it in model.field (a UUID as SQLite's hex text...)."""
    return model._meta.get_field(field).get_db_prep_value(value, db)


def execute(db, statement: str, params: list, *, commit: bool = False):
    """Run a statement of this module's (placeholders %s) on the driver's own cursor and
    return that cursor. Django's cursor wrapper costs more than the statement (a regex
    rewrite of the placeholders for SQLite on every call, connection look-ups); errors are
    still Django's (wrap_database_errors), so callers see the same exceptions. When queries
    are being logged (DEBUG, a test capturing them), the statement goes through Django's
    cursor, to be logged.

    commit=True, from the last statement of a transaction the caller's atomic block opened
    (and will commit): on PostgreSQL the statement and the COMMIT go in one message, one round
    trip. psycopg sends the parameters bound into the text (Django's default client-side
    binding), so in the simple query protocol, which runs several statements of one message in
    turn and skips the rest after an error (PostgreSQL docs, "Multiple Statements in a Simple
    Query"): a failed statement commits nothing, and the atomic block rolls back. The block's
    own COMMIT then finds no transaction in progress, and psycopg sends none."""
    if commit and _commits_with(db):
        statement += "; COMMIT"
    if db.queries_logged or db.execute_wrappers:
        cursor = db.cursor()
        cursor.execute(statement, params)
        return cursor
    if not db.in_atomic_block:  # a block's BEGIN has opened and checked the connection
        # As Django's own cursor() does: a read may be the first statement of a request or thread.
        db.close_if_health_check_failed()
        db.ensure_connection()
    with db.wrap_database_errors:
        cursor = db.connection.cursor()
        cursor.execute(_driver_style(db.vendor, statement), params)
        return cursor


@functools.lru_cache(maxsize=256)
def _driver_style(vendor: str, statement: str) -> str:
    """The statement in the driver's placeholders: sqlite3 takes ?, psycopg %s. For SQLite,
    Django's own rewrite (its cursor makes it on every call), here once per statement."""
    if vendor != "sqlite":
        return statement
    from django.db.backends.sqlite3.base import FORMAT_QMARK_REGEX  # imports sqlite3: only here

    return FORMAT_QMARK_REGEX.sub("?", statement).replace("%%", "%")


def database():
    """This thread's connection of the default database itself. `django.db.connection` is a
    proxy that looks the connection up again on every attribute: a dozen lookups per write,
    all inside the write's lock."""
    return connections[DEFAULT_DB_ALIAS]


def _commits_with(db) -> bool:
    """Whether a statement may carry its transaction's COMMIT on db (see execute)."""
    return (
        db.vendor == "postgresql"
        and not db.settings_dict["OPTIONS"].get("server_side_binding")  # the extended protocol
        and db.in_atomic_block
        and len(db.atomic_blocks) == 1  # the caller's block began the transaction; no savepoint
        and not db.needs_rollback
    )
