"""Whole-database checks: every invariant of every row (`manage.py verify`), and readiness."""

import os
import subprocess
import sys

from django.conf import settings
from django.db import DatabaseError, connection
from django.db.migrations.executor import MigrationExecutor
from django.db.models import Max, Sum

from inventory import clock, invariants, reservations
from inventory.errors import InvalidInput
from inventory.models import Hold, HoldLine, Item, Movement


def invariant_violations() -> list[str]:
    """Every row that breaks an invariant, read as stored (the ORM's own checks bypassed)."""
    problems = []
    seen: dict[str, str] = {}
    # values_list returns what the database holds: a REAL qty stays a float, and so is caught.
    rows = Item.objects.order_by("pk").values_list("pk", "name", "qty", "low_stock_threshold")
    for item_id, name, qty, threshold in rows.iterator():
        try:
            valid = invariants.validate_item({"name": name, "qty": qty, "low_stock_threshold": threshold})
        except InvalidInput as exc:
            problems.append(f"item {item_id}: {exc.message} (name={name!r}, qty={qty!r})")
            continue
        if valid["name"] != name:
            problems.append(f"item {item_id}: name {name!r} is not stored normalised")
        if valid["name"] in seen:
            problems.append(f"item {item_id}: name {valid['name']!r} is also item {seen[valid['name']]}")
        seen.setdefault(valid["name"], str(item_id))
    return problems + _ledger_violations() + _hold_violations()


def verify_elsewhere(database_url: str) -> tuple[bool, str]:
    """`manage.py verify` against another database (a backup, a copy), in a process of its own
    so that it connects exactly as the service would. Returns (passed, what it said)."""
    env = {**os.environ, "DATABASE_URL": database_url}
    # Whether that URL is a pooler is not known: client-side cursors are right behind one and
    # without one; a pooler setting means nothing for SQLite (and is refused there).
    env["DATABASE_POOLER"] = "transaction" if database_url.startswith(("postgres:", "postgresql:")) else ""
    result = subprocess.run(  # noqa: S603 (our own manage.py, no shell)
        [sys.executable, str(settings.BASE_DIR / "manage.py"), "verify"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode == 0, (result.stdout + result.stderr).strip()


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


def _hold_violations() -> list[str]:
    """For every item: the stored `reserved` is the sum of the lines it counts, within
    0..qty, and holds_expire_at their earliest expiry; what it reserves now is the sum of the
    lines of its active holds. A line is counted only while its hold is active, or expired
    with nobody having collected it yet."""
    now = clock.now()
    holds = {
        hold_id: (state, expires_at)
        for hold_id, state, expires_at in Hold.objects.values_list("id", "state", "expires_at")
    }
    counted: dict = {}
    earliest: dict = {}
    active: dict = {}
    problems = []
    for line_id, hold_id, item_id, qty, reserving, expires_at in HoldLine.objects.values_list(
        "id", "hold_id", "item_id", "qty", "reserving", "expires_at"
    ).iterator():
        stored_state, hold_expires_at = holds[hold_id]
        state = invariants.hold_state(stored_state, hold_expires_at, now)
        if expires_at != hold_expires_at:
            problems.append(
                f"hold {hold_id}: line {line_id} expires at {expires_at}, the hold at {hold_expires_at}"
            )
        if reserving:
            counted[item_id] = counted.get(item_id, 0) + qty
            earliest[item_id] = min(earliest.get(item_id, expires_at), expires_at)
            if state != invariants.ACTIVE and not (state == invariants.EXPIRED and expires_at <= now):
                problems.append(f"hold {hold_id}: {state}, yet its line for item {item_id} is still counted")
        if state == invariants.ACTIVE:
            active[item_id] = active.get(item_id, 0) + qty
    for item_id, qty, reserved, holds_expire_at in (
        Item.objects.order_by("pk").values_list("pk", "qty", "reserved", "holds_expire_at").iterator()
    ):
        if not 0 <= reserved <= qty:
            problems.append(f"item {item_id}: reserved {reserved} is not within 0..qty ({qty})")
        lines, first, held = counted.get(item_id, 0), earliest.get(item_id), active.get(item_id, 0)
        if reserved != lines:
            problems.append(f"item {item_id}: reserved {reserved} but its counted lines add up to {lines}")
        if holds_expire_at != first:
            problems.append(
                f"item {item_id}: holds_expire_at {holds_expire_at} but its lines' earliest is {first}"
            )
        exact = reservations.reserved_now(item_id, reserved, holds_expire_at, now)
        if exact != held:
            problems.append(f"item {item_id}: reserves {exact} now but its active holds add up to {held}")
    return problems


def database_ready() -> bool:
    """The database answers and every migration this code knows is applied."""
    try:
        executor = MigrationExecutor(connection)
        return not executor.migration_plan(executor.loader.graph.leaf_nodes())
    except DatabaseError:
        return False
