"""CPU per request: what the hot-row PATCH /items/<id>/qty and GET /items/<id> cost the server
(make serve: granian, its workers, the service's worker) and the database server (PostgreSQL's
processes; SQLite works inside the server's), against what one guarded UPDATE and its commit
cost through the bare driver (the "DB limit" of bench/run.py). On a machine whose cores are
all busy, these costs, not the locks, set the rates.

    .venv/bin/python bench/cpu.py [--duration 10] [--repeats 3]            # the embedded SQLite
    scripts/with-postgres .venv/bin/python bench/cpu.py --engine postgres

CPU is user + system time read from the kernel (psutil) before and after each measurement;
the workloads take turns in every repeat; medians. Writes bench/results/cpu-<engine>.md.
"""

import argparse
import statistics
import sys
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # bench/run.py, beside this file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--engine", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    args.workers = args.threads = None
    args.wrk_threads = 1

    env, conn, (item,), workdir = run.prepare(args.engine, args, 1, "cpu")

    figures: dict[str, list[dict]] = {"hot_row": [], "get_item": [], "db_limit": []}
    server = run.start_server("make --no-print-directory -s serve", env, workdir / "server.log")
    try:
        for _ in range(args.repeats):
            for workload in ("hot_row", "get_item"):
                run.run_wrk(workload, args.connections, args.warmup, env, args, server.pid)
                before = cpu_seconds(server.pid, args.engine)
                sample = run.run_wrk(workload, args.connections, args.duration, env, args, server.pid)
                after = cpu_seconds(server.pid, args.engine)
                if sample["errors"]:
                    sys.exit(f"{sample['errors']} {workload} requests failed")
                figures[workload].append(per_request(before, after, sample["requests"], sample["rps"]))
            before = cpu_seconds(None, args.engine)
            limit = run.measure_db_limit(conn, args.engine, item, args.duration)
            after = cpu_seconds(None, args.engine)
            figures["db_limit"].append(per_request(before, after, limit["commits"], limit["commits_per_s"]))
    finally:
        run.stop_server(server)

    names = {
        "hot_row": "hot row: PATCH /items/<id>/qty",
        "get_item": "GET /items/<id>",
        "db_limit": "DB limit: guarded UPDATE + COMMIT, bare driver",
    }
    lines = [
        f"# CPU per request ({args.engine})",
        "",
        f"{args.connections} connections, {args.duration:g} s per measurement after {args.warmup:g} s of"
        f" warm-up, medians of {args.repeats} repeats taking turns; microseconds of CPU (user + system)"
        f" per request or commit. Command: `{' '.join(['bench/cpu.py', *sys.argv[1:]])}`"
        f"{' under scripts/with-postgres' if args.engine == 'postgres' else ''}.",
        "",
        "| workload | per second | app server | database server | both |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for workload, samples in figures.items():
        median = {key: statistics.median(sample[key] for sample in samples) for key in samples[0]}
        lines.append(
            f"| {names[workload]} | {median['rate']:.0f} | {median['app']:.0f} | {median['database']:.0f}"
            f" | {median['app'] + median['database']:.0f} |"
        )
    lines += [
        "",
        'For the DB limit, "app server" is the one process that sends the statements.',
        "",
    ]
    report = "\n".join(lines)
    (run.RESULTS / f"cpu-{args.engine}.md").write_text(report)
    print(report)


def cpu_seconds(server_pid: int | None, engine: str) -> dict:
    """CPU seconds so far of the server's process tree (or of this process, for the DB limit)
    and, on PostgreSQL, of every PostgreSQL process on the machine (named "postgres...")."""
    if server_pid is None:
        app = [psutil.Process()]
    else:
        root = psutil.Process(server_pid)
        app = [root, *root.children(recursive=True)]
    database = [
        process
        for process in psutil.process_iter(["name"])
        if engine == "postgres" and (process.info["name"] or "").startswith("postgres")
    ]
    return {"app": _seconds(app), "database": _seconds(database)}


def _seconds(processes: list) -> dict:
    seconds = {}
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        seconds[process.pid] = times.user + times.system
    return seconds


def per_request(before: dict, after: dict, requests: int, rate: float) -> dict:
    """Microseconds of CPU per request, of the processes alive at both ends."""

    def spent(side: str) -> float:
        return sum(after[side][pid] - before[side].get(pid, 0.0) for pid in after[side])

    return {side: spent(side) / requests * 1e6 for side in ("app", "database")} | {"rate": rate}


if __name__ == "__main__":
    main()
