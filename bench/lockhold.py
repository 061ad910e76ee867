"""How long a write holds the database, per request, split into its parts: the hot-row
PATCH /items/<id>/qty in one process (Django's test client, no HTTP server, no other writer),
so that what is measured is the locked section itself, not the queue in front of it.

    .venv/bin/python bench/lockhold.py [--requests 5000]                 # the embedded SQLite
    scripts/with-postgres .venv/bin/python bench/lockhold.py             # PostgreSQL

"Held" starts when the transaction takes its lock (SQLite: BEGIN IMMEDIATE takes the writer
lock; PostgreSQL: the guarded UPDATE takes the row's lock, so from its first statement) and
ends when COMMIT returns. Its parts: the statements (time inside the driver's execute), the
Python between them, and COMMIT (on SQLite the WAL write and its fsync). Writes
bench/results/lockhold-<engine>[-<label>].md: percentiles and a histogram of each part.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BUCKETS_US = (25, 50, 100, 150, 200, 300, 400, 600, 800, 1200, 2000, 5000)
WARMUP = 200  # requests not counted: connection, caches, first pages of the tables


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--label", default="", help="added to the output file's name (before, after...)")
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL"):
        os.environ["DATABASE_URL"] = f"sqlite:///{tempfile.mkdtemp(prefix='lockhold-')}/db.sqlite3"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import DEFAULT_DB_ALIAS, connections
    from django.test import Client

    from inventory import tokens

    call_command("migrate", verbosity=0)
    run_id = uuid.uuid4().hex[:8]  # the database may hold an earlier run's token and item
    token = tokens.token_create(name=f"lockhold-{run_id}", scope="write")
    client = Client(HTTP_HOST="localhost", HTTP_AUTHORIZATION=f"Bearer {token}")
    created = client.post("/items", {"name": f"hot-{run_id}", "qty": 10**12}, content_type="application/json")
    path = f"/items/{created.json()['id']}/qty"

    samples = measure(
        connections[DEFAULT_DB_ALIAS],
        lambda: client.patch(path, {"delta": -1}, content_type="application/json"),
        args,
    )
    engine = connections[DEFAULT_DB_ALIAS].vendor
    report = markdown(engine, samples)
    label = f"-{args.label}" if args.label else ""
    (ROOT / "bench" / "results" / f"lockhold-{engine}{label}.md").write_text(report)
    print(report)


def measure(connection, request, args) -> list[dict]:
    """Run `request` args.requests times; per request the lock's parts in microseconds."""
    backend = type(connection)
    current: dict = {}
    samples: list[dict] = []
    original_commit = backend._commit
    sqlite = connection.vendor == "sqlite"
    original_start = backend._start_transaction_under_autocommit if sqlite else None

    def start(self):
        original_start(self)  # on SQLite: the writer lock and BEGIN IMMEDIATE
        current.update(held_from=time.perf_counter() if sqlite else None, statements=0.0)

    def commit(self):
        committing = time.perf_counter()
        try:
            return original_commit(self)
        finally:
            done = time.perf_counter()
            if current.get("held_from") is not None:
                held = done - current["held_from"]
                commit_s = done - committing
                samples.append(
                    {
                        "held": held * 1e6,
                        "statements": current["statements"] * 1e6,
                        "python": (held - commit_s - current["statements"]) * 1e6,
                        "commit": commit_s * 1e6,
                    }
                )
            current.clear()

    def timed(execute, sql, params, many, context):
        begun = time.perf_counter()
        if current and current.get("held_from") is None:
            current["held_from"] = begun  # PostgreSQL: the first statement takes the row lock
        try:
            return execute(sql, params, many, context)
        finally:
            if current:
                current["statements"] += time.perf_counter() - begun

    # Django opens a transaction through _start_transaction_under_autocommit on SQLite only;
    # on PostgreSQL atomic() turns autocommit off and the driver begins with the first statement.
    if sqlite:
        backend._start_transaction_under_autocommit = start
    else:
        original_set_autocommit = backend._set_autocommit

        def set_autocommit(self, autocommit):
            original_set_autocommit(self, autocommit)
            if not autocommit:
                current.update(held_from=None, statements=0.0)

        backend._set_autocommit = set_autocommit
    backend._commit = commit
    with connection.execute_wrapper(timed):
        for n in range(WARMUP + args.requests):
            response = request()
            assert response.status_code == 200, response.content
            if n == WARMUP - 1:
                samples.clear()
    return samples


def markdown(engine: str, samples: list[dict]) -> str:
    parts = ("held", "statements", "python", "commit")
    lines = [
        f"# How long a hot-row write holds the database ({engine})",
        "",
        f"PATCH /items/<id>/qty, {len(samples)} requests in one process after {WARMUP} not counted;"
        f" microseconds. Command: `{' '.join(['bench/lockhold.py', *sys.argv[1:]])}`"
        f"{' under scripts/with-postgres' if engine == 'postgresql' else ''}.",
        "",
        "| part | p50 | p90 | p99 | mean |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for part in parts:
        values = sorted(sample[part] for sample in samples)
        p50, p90, p99 = (values[min(len(values) - 1, int(q * len(values)))] for q in (0.5, 0.9, 0.99))
        lines.append(f"| {part} | {p50:.0f} | {p90:.0f} | {p99:.0f} | {statistics.fmean(values):.0f} |")
    lines += ["", "Histogram (requests per bucket, upper bound in us):", ""]
    lines.append("| part | " + " | ".join(f"<= {bound}" for bound in BUCKETS_US) + " | more |")
    lines.append("| --- |" + " ---: |" * (len(BUCKETS_US) + 1))
    for part in parts:
        counts = [0] * (len(BUCKETS_US) + 1)
        for sample in samples:
            counts[next((i for i, bound in enumerate(BUCKETS_US) if sample[part] <= bound), -1)] += 1
        lines.append(f"| {part} | " + " | ".join(str(count) for count in counts) + " |")
    lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
