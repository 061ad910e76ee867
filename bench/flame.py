"""A sampling profile of the production server under the hot-row load: `make serve` (granian
and its workers), wrk sending PATCH /items/<id>/qty from 32 connections, and py-spy sampling
every worker meanwhile. The flame graph goes to bench/results/flame-hot-row-<engine>.svg.

    .venv/bin/python bench/flame.py [--duration 20]                       # the embedded SQLite
    scripts/with-postgres .venv/bin/python bench/flame.py --engine postgres

Needs wrk and py-spy (bench/requirements.txt; py-spy reads other processes' memory, which
needs ptrace: root, or kernel.yama.ptrace_scope = 0).
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # bench/run.py, beside this file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--engine", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--duration", type=float, default=20, help="seconds of load, all of them sampled")
    parser.add_argument("--rate", type=int, default=200, help="samples per second and process")
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    args.workers = args.threads = None
    args.wrk_threads = 1

    workdir = Path(tempfile.mkdtemp(prefix="bench-flame-"))
    if args.engine == "sqlite":
        database_url = f"sqlite:///{workdir / 'bench.sqlite3'}"
    else:
        database_url = os.environ["DATABASE_URL"]
    env = run.server_env(database_url, run.free_port(), args)
    migrated = run.manage(env, "migrate", "--noinput")
    if migrated.returncode != 0:
        sys.exit(migrated.stdout + migrated.stderr)
    conn = run.connect(args.engine, database_url)
    run.seed_items(conn, args.engine, 1, 1)
    item = run.seeded_ids(conn, args.engine, 1)[0]
    token = run.manage(env, "token", "create", "flame", "--scope", "write").stdout.strip()
    env.update(BENCH_TOKEN=token, BENCH_ITEM=item)
    server = run.start_server("make --no-print-directory -s serve", env, workdir / "server.log")
    output = run.RESULTS / f"flame-hot-row-{args.engine}.svg"
    try:
        run.run_wrk("hot_row", args.connections, 2, env, args, server.pid)  # warm-up
        profiler = subprocess.Popen(
            [
                str(Path(run.PYTHON).parent / "py-spy"),
                "record",
                "--pid", str(server.pid),
                "--subprocesses",
                "--nonblocking",  # samples without pausing the workers: no skew of their timing
                "--rate", str(args.rate),
                "--duration", str(round(args.duration)),
                "--format", "flamegraph",
                "--output", str(output),
            ]
        )  # fmt: skip
        sample = run.run_wrk("hot_row", args.connections, args.duration, env, args, server.pid)
        if profiler.wait() != 0:
            sys.exit("py-spy failed (it needs ptrace: run as root, or set kernel.yama.ptrace_scope = 0)")
    finally:
        run.stop_server(server)
    print(f"{sample['rps']:.0f} req/s, p99 {sample['p99_ms']:.1f} ms while sampled; flame graph: {output}")


if __name__ == "__main__":
    main()
