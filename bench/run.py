"""Benchmarks of the production server (`make serve`) under wrk, one engine per run, and the report.

    .venv/bin/python bench/run.py --engine sqlite [--quick]
    scripts/with-postgres .venv/bin/python bench/run.py --engine postgres [--quick]
    .venv/bin/python bench/run.py --report

Each engine run writes bench/results/raw-<engine>.json; --report combines them into
results.json, RESULTS.md and the PNG plots. bench/run does all three.
"""

import argparse
import base64
import contextlib
import datetime
import http.client
import itertools
import json
import os
import platform
import secrets
import shlex
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PYTHON = str(ROOT / ".venv" / "bin" / "python")
QTY_MAX = 2**63 - 1
SEED_QTY = 1_000_000  # far from 0 and from QTY_MAX, so +1 and -1 are never refused
ID_SET = 10_000  # the items the id-based workloads pick from
SIZES = (10_000, 100_000, 1_000_000)
LEVELS = (1, 4, 16, 32, 64)

# workload -> (label, Lua script, write or read)
WORKLOADS = {
    "hot_row": ("hot row: PATCH /items/<id>/qty", "hot_row", "write"),
    "spread": ("spread: PATCH /items/<id>/qty, 10k items", "spread", "write"),
    "get_item": ("GET /items/<id>", "get_item", "read"),
    "post_items": ("POST /items", "post_items", "write"),
    "adjustments": ("POST /adjustments, 10 changes", "adjustments", "write"),
    "hold_commit": ("POST /holds, then its commit", "hold_commit", "write"),
    "feed": ("GET /events, pages of 1000 events", "feed", "read"),
    "first_page": ("GET /items, first page", "list_items", "read"),
    "deep_page": ("GET /items, deep page", "list_items", "read"),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--engine", choices=["sqlite", "postgres"])
    parser.add_argument("--report", action="store_true", help="combine the engine runs into the report")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 s, 1 s warm-up, 1 repeat")
    parser.add_argument("--duration", type=float, default=10, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2, help="seconds of discarded load before each")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--wrk-threads", type=int, default=1, help="more would take CPU from the server")
    parser.add_argument("--workers", type=int, help="WEB_CONCURRENCY (default: the server's own)")
    parser.add_argument("--threads", type=int, help="THREADS (default: the server's own)")
    parser.add_argument("--serve-command", default="make --no-print-directory -s serve")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup, args.repeats = 3, 1, 1
    if not args.report and not args.engine:
        parser.error("give --engine or --report")
    return args


# --- the database, through its own driver -------------------------------------------------


def connect(engine: str, database_url: str):
    if engine == "sqlite":
        # The service's pragmas (config/settings.py); BEGIN IMMEDIATE is issued by hand.
        conn = sqlite3.connect(database_url.removeprefix("sqlite:///"), isolation_level=None, timeout=10)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn
    import psycopg

    return psycopg.connect(database_url)


def seed_items(conn, engine: str, first: int, last: int) -> None:
    """Items item-<first>..item-<last> with qty SEED_QTY, each with its create movement
    (qty == sum of movement deltas), in one transaction."""
    low, high = f"item-{first:07d}", f"item-{last:07d}"
    if engine == "sqlite":
        now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None).isoformat(" ")
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO inventory_item (id, name, qty) VALUES (?, ?, ?)",
            ((uuid.uuid4().hex, f"item-{i:07d}", SEED_QTY) for i in range(first, last + 1)),
        )
        conn.execute(
            "INSERT INTO inventory_movement (item_id, kind, delta, qty_after, reason, request_id, at) "
            "SELECT id, 'create', qty, qty, NULL, 'bench-seed', ? FROM inventory_item "
            "WHERE name BETWEEN ? AND ?",
            (now, low, high),
        )
        conn.execute("COMMIT")
        return
    conn.execute(
        "INSERT INTO inventory_item (id, name, qty) SELECT gen_random_uuid(), "
        "'item-' || lpad(i::text, 7, '0'), %s::bigint FROM generate_series(%s::bigint, %s::bigint) AS i",
        (SEED_QTY, first, last),
    )
    conn.execute(
        "INSERT INTO inventory_movement (item_id, kind, delta, qty_after, reason, request_id, at) "
        "SELECT id, 'create', qty, qty, NULL, 'bench-seed', now() FROM inventory_item "
        "WHERE name BETWEEN %s AND %s",
        (low, high),
    )
    conn.commit()
    conn.execute("ANALYZE inventory_item")  # as autovacuum would, soon after
    conn.execute("ANALYZE inventory_movement")
    conn.commit()


def seeded_ids(conn, engine: str, count: int) -> list[str]:
    """Canonical UUIDs of item-0000001..count (SQLite stores them as 32 hex digits)."""
    mark = "?" if engine == "sqlite" else "%s"
    rows = conn.execute(
        f"SELECT id FROM inventory_item WHERE name BETWEEN {mark} AND {mark} ORDER BY name",  # noqa: S608
        ("item-0000001", f"item-{count:07d}"),
    ).fetchall()
    if engine == "postgres":
        conn.commit()
    return [str(uuid.UUID(str(row[0]))) for row in rows]


def count_items(conn, engine: str) -> int:
    count = conn.execute("SELECT count(*) FROM inventory_item").fetchone()[0]
    if engine == "postgres":
        conn.commit()
    return count


def database_version(conn, engine: str) -> str:
    if engine == "sqlite":
        return sqlite3.sqlite_version
    version = conn.execute("SHOW server_version").fetchone()[0]
    conn.commit()
    return version


def measure_db_limit(conn, engine: str, item_id: str, duration: float) -> dict:
    """Commits/s of the service's guarded UPDATE alone, one transaction each, on one row.
    +1 and -1 alternate and the count is made even, so qty (and the ledger) end unchanged."""
    mark = "?" if engine == "sqlite" else "%s"
    key = uuid.UUID(item_id).hex if engine == "sqlite" else item_id
    up = f"UPDATE inventory_item SET qty = qty + 1 WHERE id = {mark} AND qty <= {QTY_MAX - 1}"  # noqa: S608
    down = f"UPDATE inventory_item SET qty = qty - 1 WHERE id = {mark} AND qty >= 1"  # noqa: S608
    commits, start = 0, time.monotonic()
    while time.monotonic() - start < duration or commits % 2:
        if engine == "sqlite":
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(down if commits % 2 else up, (key,))
            conn.execute("COMMIT")
        else:
            conn.execute(down if commits % 2 else up, (key,))
            conn.commit()
        commits += 1
    elapsed = time.monotonic() - start
    return {"commits": commits, "duration_s": elapsed, "commits_per_s": commits / elapsed}


# --- the server and the load --------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(database_url: str, port: int, args) -> dict:
    env = {**os.environ, "DATABASE_URL": database_url, "HOST": "127.0.0.1", "PORT": str(port)}
    env["SECRET_KEY"] = "bench-" + secrets.token_urlsafe(48)
    if args.workers:
        env["WEB_CONCURRENCY"] = str(args.workers)
    if args.threads:
        env["THREADS"] = str(args.threads)
    return env


def manage(env: dict, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PYTHON, "manage.py", *command], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )


def http_get(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def prepare(engine: str, args, items: int, name: str) -> tuple[dict, object, list[str], Path]:
    """A database ready for a side benchmark (bench/servers.py, flame.py, cpu.py): the embedded
    SQLite in a new folder, or DATABASE_URL on PostgreSQL; migrated; item-0000001..`items`
    seeded unless an earlier run seeded them; a write token of its own (an earlier run's may
    be there); and the environment the server and the wrk scripts read (BENCH_TOKEN,
    BENCH_ITEM: the first item, BENCH_IDS: a file of every id). Returns the environment, a
    connection, the ids and the folder."""
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
    if engine == "sqlite":
        database_url = f"sqlite:///{workdir / 'bench.sqlite3'}"
    else:
        database_url = os.environ["DATABASE_URL"]
    env = server_env(database_url, free_port(), args)
    migrated = manage(env, "migrate", "--noinput")
    if migrated.returncode != 0:
        sys.exit(migrated.stdout + migrated.stderr)
    conn = connect(engine, database_url)
    if count_items(conn, engine) == 0:
        seed_items(conn, engine, 1, items)
    ids = seeded_ids(conn, engine, items)
    (workdir / "ids.txt").write_text("\n".join(ids) + "\n")
    token_name = f"{name}-{secrets.token_hex(4)}"
    token = manage(env, "token", "create", token_name, "--scope", "write").stdout.strip()
    env.update(BENCH_TOKEN=token, BENCH_ITEM=ids[0], BENCH_IDS=str(workdir / "ids.txt"))
    return env, conn, ids, workdir


def start_server(command: str, env: dict, log_path: Path) -> subprocess.Popen:
    with log_path.open("ab") as log:
        # A session of its own, so that stop_server() reaches make, the server and every worker.
        process = subprocess.Popen(
            shlex.split(command), cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True
        )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the server exited:\n{log_path.read_text()[-3000:]}")
        try:
            if http_get(int(env["PORT"]), "/readyz")[0] == 200:
                return process
        except OSError:
            pass
        time.sleep(0.2)
    stop_server(process)
    sys.exit(f"the server did not get ready:\n{log_path.read_text()[-3000:]}")


def stop_server(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def tree_rss(root: psutil.Process) -> int:
    total = 0
    try:
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):  # a worker that just exited
            total += process.memory_info().rss
    return total


def run_wrk(script: str, connections: int, duration: float, env: dict, args, server_pid: int) -> dict:
    """One wrk run; peak RSS of the server's process tree sampled every 100 ms meanwhile."""
    command = [
        "wrk", f"-t{min(args.wrk_threads, connections)}", f"-c{connections}", f"-d{max(1, round(duration))}s",
        "--timeout", "30s", "--latency", "-s", f"bench/lua/{script}.lua", f"http://127.0.0.1:{env['PORT']}",
    ]  # fmt: skip
    wrk_env = {**env, "BENCH_SEED": str(secrets.randbelow(2**31)), "BENCH_PREFIX": secrets.token_hex(4)}
    process = subprocess.Popen(
        command, cwd=ROOT, env=wrk_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    server, peak = psutil.Process(server_pid), 0
    while process.poll() is None:
        peak = max(peak, tree_rss(server))
        time.sleep(0.1)
    out, err = process.communicate()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if process.returncode != 0 or not lines:
        sys.exit(f"wrk failed ({process.returncode}):\n{out}\n{err}")
    result = json.loads(lines[-1])
    seconds = result["duration_us"] / 1e6
    return {
        "requests": result["requests"],
        "duration_s": seconds,
        "rps": result["requests"] / seconds,
        "p50_ms": result["p50_us"] / 1000,
        "p99_ms": result["p99_us"] / 1000,
        "status_errors": result["status_errors"],
        "socket_errors": result["socket_errors"],
        "errors": result["status_errors"] + result["socket_errors"],
        "peak_rss_mib": peak / 2**20,
    }


def encode_cursor(name: str) -> str:
    """The API's own cursor (inventory.http.cursors.encode): base64url of {"after": name}."""
    return base64.urlsafe_b64encode(json.dumps({"after": name}).encode()).rstrip(b"=").decode()


def deep_page_path(port: int, token: str, size: int) -> str:
    """A page 150 names before the end of the seeded items, checked against the API."""
    after, expected = f"item-{size - 150:07d}", f"item-{size - 149:07d}"
    path = f"/items?cursor={encode_cursor(after)}"
    status, body = http_get(port, path, token)
    if status != 200 or json.loads(body)["items"][0]["name"] != expected:
        sys.exit(f"the deep page cursor does not work: {status} {body[:300]!r}")
    return path


# --- one engine ---------------------------------------------------------------------------


def run_engine(args) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    if args.engine == "sqlite":
        database_url = f"sqlite:///{workdir / 'bench.sqlite3'}"
    else:
        database_url = os.environ["DATABASE_URL"]
    port = free_port()
    env = server_env(database_url, port, args)
    migrated = manage(env, "migrate", "--noinput")
    if migrated.returncode != 0:
        sys.exit(migrated.stdout + migrated.stderr)
    conn = connect(args.engine, database_url)
    started = time.monotonic()
    seed_items(conn, args.engine, 1, SIZES[0])
    seed_seconds = {SIZES[0]: time.monotonic() - started}
    ids = seeded_ids(conn, args.engine, ID_SET)
    (workdir / "ids.txt").write_text("\n".join(ids) + "\n")
    token = manage(env, "token", "create", "bench", "--scope", "write").stdout.strip()
    env.update(BENCH_TOKEN=token, BENCH_IDS=str(workdir / "ids.txt"), BENCH_ITEM=ids[0])
    log_path = workdir / "server.log"
    server = start_server(args.serve_command, env, log_path)
    db_limits, samples, item_counts = [], [], {}

    def measure(workload: str, repeat: int, connections: int, size: int, path: str = "") -> None:
        wrk_env = {**env, "BENCH_PATH": path}
        script = WORKLOADS[workload][1]
        run_wrk(script, connections, args.warmup, wrk_env, args, server.pid)  # warm-up, discarded
        sample = run_wrk(script, connections, args.duration, wrk_env, args, server.pid)
        sample.update(workload=workload, repeat=repeat, connections=connections, items=size)
        samples.append(sample)
        print(
            f"{args.engine} r{repeat} {workload:<11} c={connections:<3} items={size:<8} "
            f"{sample['rps']:8.1f} req/s  p50 {sample['p50_ms']:7.2f} ms  p99 {sample['p99_ms']:7.2f} ms  "
            f"errors {sample['errors']}  rss {sample['peak_rss_mib']:.0f} MiB",
            flush=True,
        )

    try:
        pages = {"first_page": "/items", "deep_page": deep_page_path(port, token, SIZES[0])}
        for repeat in range(1, args.repeats + 1):
            limit = measure_db_limit(conn, args.engine, ids[0], args.duration)
            db_limits.append({**limit, "repeat": repeat})
            print(f"{args.engine} r{repeat} DB limit {limit['commits_per_s']:.1f} commits/s", flush=True)
            # The feed is read after the writes, which have written far more than a page of events.
            for workload in (
                "hot_row",
                "spread",
                "get_item",
                "post_items",
                "adjustments",
                "hold_commit",
                "feed",
            ):
                measure(workload, repeat, args.connections, SIZES[0])
            for workload in ("hot_row", "get_item"):
                for level in LEVELS:
                    if level != args.connections:
                        measure(workload, repeat, level, SIZES[0])
            for workload, path in pages.items():
                measure(workload, repeat, args.connections, SIZES[0], path)
        item_counts[SIZES[0]] = count_items(conn, args.engine)
        for smaller, size in itertools.pairwise(SIZES):
            started = time.monotonic()
            seed_items(conn, args.engine, smaller + 1, size)
            seed_seconds[size] = time.monotonic() - started
            item_counts[size] = count_items(conn, args.engine)
            pages = {"first_page": "/items", "deep_page": deep_page_path(port, token, size)}
            for repeat in range(1, args.repeats + 1):
                for workload, path in pages.items():
                    measure(workload, repeat, args.connections, size, path)
    finally:
        stop_server(server)
    verified = manage(env, "verify")
    print(f"{args.engine} verify: exit {verified.returncode} {verified.stdout.strip()}", flush=True)
    raw = {
        "engine": args.engine,
        "database_version": database_version(conn, args.engine),
        "command_line": [sys.executable, *sys.argv],
        "server_command": args.serve_command,
        "workers": args.workers or "server default (WEB_CONCURRENCY, else one per CPU core)",
        "threads": args.threads or "server default (THREADS or 1)",
        "connections": args.connections,
        "wrk_threads": args.wrk_threads,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "repeats": args.repeats,
        "seed_seconds": seed_seconds,
        "items_in_table": item_counts,
        "db_limit": db_limits,
        "samples": samples,
        "verify": {"exit": verified.returncode, "output": (verified.stdout + verified.stderr)[-5000:]},
        "server_log_statuses": log_statuses(log_path),
        "finished_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    conn.close()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"raw-{args.engine}.json").write_text(json.dumps(raw, indent=1))


def log_statuses(log_path: Path) -> dict:
    """Requests per "method route status", from the server's JSON request log."""
    counts = Counter()
    for line in log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if "status" in entry:
                counts[f"{entry.get('method')} {entry.get('route')} {entry['status']}"] += 1
    return dict(sorted(counts.items()))


# --- the report ---------------------------------------------------------------------------


def median_of(samples: list[dict], workload: str, connections: int, items: int) -> dict | None:
    chosen = [
        s for s in samples if (s["workload"], s["connections"], s["items"]) == (workload, connections, items)
    ]
    if not chosen:
        return None
    keys = ("rps", "p50_ms", "p99_ms", "errors", "peak_rss_mib")
    return {key: statistics.median(s[key] for s in chosen) for key in keys}


def paired_ratio(numerators: dict, denominators: dict) -> float | None:
    """The median over repeats of numerator / denominator, each pair measured in one repeat:
    side by side, so that a noisy minute of the machine moves both."""
    ratios = [numerators[r] / denominators[r] for r in numerators if r in denominators]
    return statistics.median(ratios) if ratios else None


def by_repeat(samples: list[dict], workload: str, connections: int, items: int, key: str) -> dict:
    return {
        s["repeat"]: s[key]
        for s in samples
        if (s["workload"], s["connections"], s["items"]) == (workload, connections, items)
    }


def machine_info() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line), "?"
    )
    import django

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "django": django.get_version(),
        "sqlite": sqlite3.sqlite_version,
    }


def report() -> None:
    engines = {}
    for engine in ("sqlite", "postgres"):
        path = RESULTS / f"raw-{engine}.json"
        if path.exists():
            engines[engine] = json.loads(path.read_text())
    if not engines:
        sys.exit("no engine results in bench/results: run bench/run")
    summary = {engine: summarize(raw) for engine, raw in engines.items()}
    machine = machine_info()
    machine["date"] = max(raw.get("finished_at", "?") for raw in engines.values())
    if "postgres" in engines:
        machine["postgresql"] = engines["postgres"]["database_version"]
    command = os.environ.get("BENCH_COMMAND") or " ".join(next(iter(engines.values()))["command_line"])
    results = {"machine": machine, "command": command, "summary": summary, "engines": engines}
    (RESULTS / "results.json").write_text(json.dumps(results, indent=1))
    (RESULTS / "RESULTS.md").write_text(markdown(results))
    plot(results)
    print((RESULTS / "RESULTS.md").read_text())


def summarize(raw: dict) -> dict:
    samples, connections, base = raw["samples"], raw["connections"], SIZES[0]
    limit = statistics.median(d["commits_per_s"] for d in raw["db_limit"])
    limit_by_repeat = {d["repeat"]: d["commits_per_s"] for d in raw["db_limit"]}
    hot_by_repeat = by_repeat(samples, "hot_row", connections, base, "rps")
    rows = {w: median_of(samples, w, connections, base) for w in WORKLOADS}
    for workload, row in rows.items():
        if row:
            against = limit_by_repeat if WORKLOADS[workload][2] == "write" else hot_by_repeat
            row["ratio"] = paired_ratio(by_repeat(samples, workload, connections, base, "rps"), against)
    levels = sorted({s["connections"] for s in samples if s["workload"] in ("hot_row", "get_item")})
    by_level = {w: {c: median_of(samples, w, c, base) for c in levels} for w in ("hot_row", "get_item")}
    pages = {
        size: {w: median_of(samples, w, connections, size) for w in ("first_page", "deep_page")}
        for size in SIZES
    }
    for size, page in pages.items():
        page["deep_over_first"] = paired_ratio(
            by_repeat(samples, "deep_page", connections, size, "p50_ms"),
            by_repeat(samples, "first_page", connections, size, "p50_ms"),
        )
    return {
        "db_limit_commits_per_s": limit,
        "workloads": rows,
        "by_concurrency": by_level,
        "page_cost": pages,
    }


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = ["# Benchmark results", ""]
    for engine, summary in results["summary"].items():
        raw = results["engines"][engine]
        lines += [
            f"## {engine} ({raw['database_version']})",
            "",
            f"{raw['connections']} connections, wrk -t{raw['wrk_threads']}, {raw['duration_s']:g} s per "
            f"measurement after {raw['warmup_s']:g} s warm-up, median of {raw['repeats']}; 10,000 seeded "
            f"items; server `{raw['server_command']}`, workers {raw['workers']}, threads {raw['threads']}. "
            "Peak RSS is the server's process tree (make, the server, its workers), not the database's. "
            "A paired ratio is the median over repeats of the two figures measured in the same repeat.",
            "",
            "| workload | req/s (median) | p50 ms | p99 ms | errors | peak RSS MiB | ratio, paired |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for workload, row in summary["workloads"].items():
            if row:
                kind = "of DB limit" if WORKLOADS[workload][2] == "write" else "of hot row"
                lines.append(
                    f"| {WORKLOADS[workload][0]} | {row['rps']:.1f} | {row['p50_ms']:.2f} "
                    f"| {row['p99_ms']:.2f} "
                    f"| {row['errors']:g} | {row['peak_rss_mib']:.0f} | {row['ratio']:.2f} {kind} |"
                )
        lines += [
            "",
            f"DB limit (the guarded UPDATE, one commit each, no HTTP): "
            f"**{summary['db_limit_commits_per_s']:.1f} commits/s**.",
            "",
        ]
        feed = summary["workloads"].get("feed")
        if feed:
            lines += [
                f"Change feed read throughput: **{feed['rps'] * 1000:.0f} events/s** (pages of 1000).",
                "",
            ]
        lines += [
            "| connections | hot row p50 ms | hot row p99 ms | GET item p50 ms | GET item p99 ms |",
            "| ---: | ---: | ---: | ---: | ---: |",
        ]
        for level, hot in summary["by_concurrency"]["hot_row"].items():
            get = summary["by_concurrency"]["get_item"][level]
            lines.append(
                f"| {level} | {hot['p50_ms']:.2f} | {hot['p99_ms']:.2f} "
                f"| {get['p50_ms']:.2f} | {get['p99_ms']:.2f} |"
            )
        lines += [
            "",
            "| items (seeded) | first page p50 ms | deep page p50 ms | deep / first, paired |",
            "| ---: | ---: | ---: | ---: |",
        ]
        for size, page in summary["page_cost"].items():
            first, deep = page["first_page"], page["deep_page"]
            if first and deep:
                lines.append(
                    f"| {int(size):,} | {first['p50_ms']:.2f} | {deep['p50_ms']:.2f} | "
                    f"{page['deep_over_first']:.2f} |"
                )
        lines += ["", f"`manage.py verify` after the run: exit {raw['verify']['exit']}.", ""]
    lines += [
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux {m['kernel']}, "
        f"Python {m['python']}, Django {m['django']}, SQLite {m['sqlite']}, "
        f"PostgreSQL {m.get('postgresql', '-')}; {m['date']}.",
        "",
        f"Command: `{results['command']}`",
        "",
    ]
    return "\n".join(lines)


def plot(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = results["summary"]
    engines = list(summary)
    colors = dict(zip(engines, ("tab:blue", "tab:orange"), strict=False))

    fig, ax = plt.subplots(figsize=(11, 5))
    names = list(WORKLOADS)
    width = 0.8 / len(engines)
    for i, engine in enumerate(engines):
        rates = [(summary[engine]["workloads"][w] or {}).get("rps", 0) for w in names]
        ax.bar([x + i * width for x in range(len(names))], rates, width, label=engine, color=colors[engine])
        ax.axhline(summary[engine]["db_limit_commits_per_s"], color=colors[engine], linestyle="--",
                   label=f"{engine} DB limit (commits/s)")  # fmt: skip
    ax.set_xticks([x + width * (len(engines) - 1) / 2 for x in range(len(names))])
    ax.set_xticklabels([WORKLOADS[w][0].replace(": ", ":\n").replace(", ", ",\n") for w in names], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("requests/s (median, log scale)")
    ax.set_title("Throughput by workload (10,000 items)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "throughput.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, workload in zip(axes, ("hot_row", "get_item"), strict=True):
        for engine in engines:
            levels = summary[engine]["by_concurrency"][workload]
            xs = [int(c) for c in levels]
            for key, style in (("p50_ms", "-"), ("p99_ms", "--")):
                ax.plot(xs, [levels[c][key] for c in levels], style, marker="o", color=colors[engine],
                        label=f"{engine} {key[:3]}")  # fmt: skip
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_yscale("log")
        ax.set_xlabel("connections")
        ax.set_title(WORKLOADS[workload][0])
        ax.legend(fontsize=8)
    axes[0].set_ylabel("latency ms (log scale)")
    fig.tight_layout()
    fig.savefig(RESULTS / "latency_by_concurrency.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for engine in engines:
        pages = summary[engine]["page_cost"]
        for workload, style in (("first_page", "-"), ("deep_page", "--")):
            points = [(int(size), page[workload]["p50_ms"]) for size, page in pages.items() if page[workload]]
            ax.plot(*zip(*points, strict=True), style, marker="o", color=colors[engine],
                    label=f"{engine} {workload.replace('_', ' ')}")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("items in the table (seeded)")
    ax.set_ylabel("p50 latency ms")
    ax.set_ylim(bottom=0)
    ax.set_title("GET /items page cost")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "page_cost.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.report:
        report()
    else:
        run_engine(arguments)
