"""The README's move: 100,000 items with holds, movements and events, from the embedded SQLite
to PostgreSQL with `copy_database`, served from there (new writes continue every sequence), and
back to a fresh SQLite: every row of every table equal at each step, in bounded memory."""

import json
import random
import re
import subprocess
import sys

import pytest

from tests.e2e.conftest import REQUEST_TIMEOUT, ROOT, Server, parallel

pytestmark = pytest.mark.e2e

ITEMS = 100_000
PEAK_MEMORY_MIB = 300  # the copy's whole process, Django included; a copy that held a table would not fit

SEED = f"""
import datetime, uuid
from django.db import transaction
from inventory import events
from inventory.models import Event, Item, Movement
now = datetime.datetime.now(datetime.UTC)
with transaction.atomic():
    for start in range(0, {ITEMS}, 5000):
        batch = [
            Item(id=uuid.uuid4(), name=f"seed-{{i:06d}}", qty=i % 1000 + 10)
            for i in range(start, start + 5000)
        ]
        Item.objects.bulk_create(batch)
        Movement.objects.bulk_create(
            Movement(item_id=item.id, kind="create", delta=item.qty, qty_after=item.qty, actor="seed",
                     request_id="seed")
            for item in batch
        )
        Event.objects.bulk_create(
            Event(type="item.created", at=now, actor="seed", request_id="seed", item_id=item.id,
                  data=events.item_data(item))
            for item in batch
        )
"""

# Every row of every table of the service, in primary-key order, as one digest per table.
FINGERPRINT = """
import datetime, hashlib, json, uuid
from inventory.copying import models_in_order

def plain(value):
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.UTC).isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value

digests = {}
for model in models_in_order():
    names = [field.attname for field in model._meta.concrete_fields]
    digest, rows = hashlib.sha256(), 0
    for row in model.objects.order_by("pk").values_list(*names).iterator(chunk_size=5000):
        digest.update(json.dumps([plain(value) for value in row], sort_keys=True).encode())
        rows += 1
    digests[model._meta.db_table] = [rows, digest.hexdigest()]
print(json.dumps(digests))
"""


def fingerprint(server: Server) -> dict:
    return json.loads(server.manage("shell", "--no-imports", "-c", FINGERPRINT).strip().splitlines()[-1])


def copy(source: Server, target_url: str) -> dict:
    """`copy_database --to URL` from the source's database; its figures."""
    said = source.manage("copy_database", "--to", target_url)
    figures = re.search(r"copied (\d+) rows in ([\d.]+) s \((\d+) rows/s\), peak memory (\d+) MiB", said)
    assert figures, said
    rows, seconds, rate, peak = figures.groups()
    print(f"copy_database: {rows} rows, {seconds} s, {rate} rows/s, peak memory {peak} MiB")
    return {"rows": int(rows), "rows/s": int(rate), "peak MiB": int(peak)}


def busy_day(server: Server, item_ids: list[str]) -> None:
    """Holds made, committed, released, left active or left to expire, and deltas, from
    parallel clients: rows of every kind for the copy."""
    rng = random.Random(7)
    picks = [rng.sample(item_ids, 2) for _ in range(120)]

    def work(i):
        for n, (a, b) in enumerate(picks[i::8]):
            ttl = 1 if n % 5 == 0 else 3600
            lines = [{"id": a, "qty": 1}, {"id": b, "qty": 2}]
            status, hold = server.client.request("POST", "/holds", {"lines": lines, "ttl_seconds": ttl})
            assert status == 201, (status, hold)
            if n % 5 == 1:
                assert server.client.request("POST", f"/holds/{hold['id']}/commit")[0] == 200
            elif n % 5 == 2:
                assert server.client.request("POST", f"/holds/{hold['id']}/release")[0] == 200
            status, item = server.client.request("PATCH", f"/items/{a}/qty", {"delta": 3})
            assert status == 200, (status, item)

    parallel(8, work)


def test_the_move_to_postgresql_and_back_keeps_every_row(database_url, tmp_path):
    if not database_url.startswith("postgres"):
        pytest.skip("the move needs a PostgreSQL to move to (scripts/with-postgres)")
    (tmp_path / "sqlite").mkdir()
    (tmp_path / "postgres").mkdir()
    sqlite = Server(f"sqlite:///{tmp_path / 'sqlite' / 'db.sqlite3'}", tmp_path / "sqlite")
    postgres = Server(database_url, tmp_path / "postgres")
    try:
        sqlite.manage("migrate", "--noinput")
        sqlite.manage("shell", "--no-imports", "-c", SEED)
        sqlite.start()
        sqlite.client.token = sqlite.manage("token", "create", "mover", "--scope", "write").strip()
        item_ids = [item["id"] for item in sqlite.client.request("GET", "/items?limit=1000")[1]["items"]]
        busy_day(sqlite, item_ids)
        sqlite.stop(timeout=REQUEST_TIMEOUT)  # the move: every writer stopped first
        before = fingerprint(sqlite)
        assert before["inventory_item"][0] == ITEMS
        assert all(
            before[table][0] > 0 for table in ("inventory_hold", "inventory_holdline", "inventory_event")
        )

        figures = copy(sqlite, database_url)

        assert figures["peak MiB"] < PEAK_MEMORY_MIB, figures
        assert figures["rows"] == sum(rows for rows, _ in before.values())
        assert fingerprint(postgres) == before
        assert fingerprint(sqlite) == before, "the copy changed its source"

        postgres.start()
        postgres.client.token = postgres.manage("token", "create", "after-move", "--scope", "write").strip()
        status, new = postgres.client.request("POST", "/items", {"name": "after the move", "qty": 5})
        assert status == 201, (status, new)
        status, item = postgres.client.request("PATCH", f"/items/{item_ids[0]}/qty", {"delta": -1})
        assert status == 200, (status, item)
        hold = {"lines": [{"id": new["id"], "qty": 2}], "ttl_seconds": 3600}
        assert postgres.client.request("POST", "/holds", hold)[0] == 201
        assert "ok" in postgres.verify()
        postgres.stop(timeout=REQUEST_TIMEOUT)
        moved = fingerprint(postgres)
        assert moved["inventory_event"][0] > before["inventory_event"][0]

        back = Server(f"sqlite:///{tmp_path / 'sqlite' / 'back.sqlite3'}", tmp_path / "sqlite")
        copy(postgres, back.database_url)

        assert fingerprint(back) == moved
        assert "ok" in back.verify()
    finally:
        sqlite.stop()
        postgres.stop()


def refused(server: Server, *args: str) -> str:
    """What `manage.py ARGS` said when it failed, as it must."""
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=server.env, capture_output=True, text=True
    )
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    return result.stderr


@pytest.fixture
def small(tmp_path) -> Server:
    """A migrated SQLite database with one item (no server running)."""
    server = Server(f"sqlite:///{tmp_path / 'small.sqlite3'}", tmp_path)
    server.manage("migrate", "--noinput")
    server.manage("shell", "-c", "from inventory import items; items.item_create(name='one', qty=1)")
    return server


def test_copy_database_refuses_a_target_that_holds_data_and_leaves_it_alone(small, tmp_path):
    target = Server(f"sqlite:///{tmp_path / 'target.sqlite3'}", tmp_path)
    target.manage("migrate", "--noinput")
    target.manage("shell", "-c", "from inventory import items; items.item_create(name='mine', qty=7)")
    before = fingerprint(target)

    said = refused(small, "copy_database", "--to", target.database_url)

    assert "the target is not empty: inventory_item has rows" in said
    assert fingerprint(target) == before


@pytest.mark.parametrize(
    "url",
    ["itself", "nonsense://x", "", "postgres://", "postgres://nobody@127.0.0.1:1/nothing", "sqlite:///"],
)
def test_copy_database_refuses_a_target_it_cannot_copy_to(small, url):
    said = refused(small, "copy_database", "--to", small.database_url if url == "itself" else url)

    assert said.startswith("CommandError: "), said


def test_verify_of_a_database_that_is_not_the_service_s_says_so(tmp_path):
    empty = Server(f"sqlite:///{tmp_path / 'empty.sqlite3'}", tmp_path)

    said = refused(empty, "verify")

    assert said.startswith("CommandError: cannot read the database: no such table"), said


def test_a_backup_refuses_a_place_it_cannot_write(small, tmp_path):
    said = refused(small, "backup", str(tmp_path / "no such folder" / "backup"))

    assert said.startswith("CommandError: "), said


def test_a_backup_through_a_transaction_pooler_is_refused_before_it_starts(tmp_path):
    pooled = Server("postgres://nobody@127.0.0.1:1/inventory", tmp_path)
    pooled.extra_env["DATABASE_POOLER"] = "transaction"

    said = refused(pooled, "backup", str(tmp_path / "backup"))

    assert "pg_dump needs a session of its own" in said, said
    assert not (tmp_path / "backup").exists()


def test_a_backup_never_overwrites_a_file(small, tmp_path):
    existing = tmp_path / "precious"
    existing.write_bytes(b"not a backup")

    said = refused(small, "backup", str(existing))

    assert "exists: a backup never overwrites a file" in said
    assert existing.read_bytes() == b"not a backup"
