"""The most group commit could save on SQLite: the hot-row transition (items.qty_adjust) each in
a transaction of its own, against --group of them per transaction, each in a savepoint (so that
a refusal of one would not undo another), in one process and one thread, no HTTP. Group commit
saves BEGIN, COMMIT and its fsync, and the writer lock's turn, for all but one transition of a
group; it adds a savepoint to each, and in a server it would add the hand-over of every request
to the thread that commits, which this leaves out: so it is an upper bound.

    .venv/bin/python bench/group_commit.py [--writes 2000] [--group 8] [--repeats 5]

The two ways take turns in every repeat; medians. Writes bench/results/group_commit.md.
"""

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--writes", type=int, default=2000, help="per way and repeat")
    parser.add_argument("--group", type=int, default=8, help="transitions per transaction")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ["DATABASE_URL"] = f"sqlite:///{tempfile.mkdtemp(prefix='group-commit-')}/db.sqlite3"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import transaction

    from inventory import items

    call_command("migrate", verbosity=0)
    item = items.item_create(name="hot", qty=10**12)

    def write() -> None:
        items.qty_adjust(item_id=item.id, delta=-1, actor="bench", request_id="bench")

    def group() -> None:
        with transaction.atomic():
            for _ in range(args.group):
                with transaction.atomic():  # a savepoint
                    write()

    ways = {
        "one transaction per write": (write, 1),
        f"{args.group} writes per transaction": (group, args.group),
    }
    for function, size in ways.values():  # warm-up: caches, the first pages of the tables
        for _ in range(200 // size):
            function()
    figures = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name, (function, size) in ways.items():
            figures[name].append(measure(function, args.writes // size, size))

    lines = [
        "# The most group commit could save on SQLite",
        "",
        f"items.qty_adjust on one item, {args.writes} writes per way and repeat, one thread, no HTTP;"
        f" medians of {args.repeats} repeats, the ways taking turns. Microseconds per write."
        f" Command: `{' '.join(['bench/group_commit.py', *sys.argv[1:]])}`.",
        "",
        "| way | wall per write | CPU per write (user + system) |",
        "| --- | ---: | ---: |",
    ]
    for name, samples in figures.items():
        wall = statistics.median(sample[0] for sample in samples)
        cpu = statistics.median(sample[1] for sample in samples)
        lines.append(f"| {name} | {wall:.0f} | {cpu:.0f} |")
    first, grouped = figures.values()
    paired = statistics.median(g[1] / f[1] for f, g in zip(first, grouped, strict=True))
    lines += ["", f"CPU per write grouped / alone, paired: {paired:.2f}.", ""]
    report = "\n".join(lines)
    (ROOT / "bench" / "results" / "group_commit.md").write_text(report)
    print(report)


def measure(function, calls: int, size: int) -> tuple[float, float]:
    """Wall and CPU microseconds per write over `calls` calls of `size` writes each."""
    before, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(calls):
        function()
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    writes = calls * size
    return wall / writes * 1e6, cpu / writes * 1e6


if __name__ == "__main__":
    main()
