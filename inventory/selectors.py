"""Every read. No selector opens a transaction: on SQLite that would take the write lock."""

import uuid

from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor

from inventory import invariants
from inventory.errors import InvalidInput
from inventory.models import Item


def item_get(*, item_id: uuid.UUID) -> Item | None:
    return Item.objects.filter(pk=item_id).first()


def item_list(*, limit: int, after_name: str | None = None) -> tuple[list[Item], bool]:
    """A page of items ordered by name (keyset: a deep page costs what the first does).

    Returns the page and whether more items follow it.
    """
    items = Item.objects.order_by("name")
    if after_name is not None:
        items = items.filter(name__gt=after_name)
    page = list(items[: limit + 1])
    return page[:limit], len(page) > limit


def invariant_violations() -> list[str]:
    """Every row that breaks an invariant, read as stored (the ORM's own checks bypassed)."""
    problems = []
    seen: dict[str, str] = {}
    # values_list returns what the database holds: a REAL qty stays a float, and so is caught.
    for item_id, name, qty in Item.objects.order_by("pk").values_list("pk", "name", "qty").iterator():
        try:
            valid = invariants.validate_item({"name": name, "qty": qty})
        except InvalidInput as exc:
            problems.append(f"item {item_id}: {exc.message} (name={name!r}, qty={qty!r})")
            continue
        if valid["name"] != name:
            problems.append(f"item {item_id}: name {name!r} is not stored normalised")
        if valid["name"] in seen:
            problems.append(f"item {item_id}: name {valid['name']!r} is also item {seen[valid['name']]}")
        seen.setdefault(valid["name"], str(item_id))
    return problems


def database_ready() -> bool:
    """The database answers and every migration this code knows is applied."""
    try:
        executor = MigrationExecutor(connection)
        return not executor.migration_plan(executor.loader.graph.leaf_nodes())
    except DatabaseError:
        return False
