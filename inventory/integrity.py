"""Whole-database checks: every invariant of every row (`manage.py verify`), and readiness."""

from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor
from django.db.models import Max, Sum

from inventory import invariants
from inventory.errors import InvalidInput
from inventory.models import Item, Movement


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
    return problems + _ledger_violations()


def _ledger_violations() -> list[str]:
    """For every item: qty == the sum of its movements' deltas, the last of which left qty."""
    ledger = {
        row["item_id"]: (row["total"], row["last_id"])
        for row in Movement.objects.values("item_id").annotate(total=Sum("delta"), last_id=Max("id"))
    }
    last_ids = [last_id for _, last_id in ledger.values()]
    qty_left = {}
    for start in range(0, len(last_ids), 5000):  # bounded IN lists
        chunk = last_ids[start : start + 5000]
        qty_left.update(Movement.objects.filter(id__in=chunk).values_list("item_id", "qty_after"))
    problems = []
    for item_id, qty in Item.objects.order_by("pk").values_list("pk", "qty").iterator():
        total, _ = ledger.get(item_id, (None, None))
        if total != qty:
            problems.append(f"item {item_id}: qty {qty!r} but its movements add up to {total!r}")
        elif qty_left[item_id] != qty:
            problems.append(f"item {item_id}: qty {qty!r} but its last movement left {qty_left[item_id]!r}")
    return problems


def database_ready() -> bool:
    """The database answers and every migration this code knows is applied."""
    try:
        executor = MigrationExecutor(connection)
        return not executor.migration_plan(executor.loader.graph.leaf_nodes())
    except DatabaseError:
        return False
