"""Which production server, or which version of the code: each candidate command against one
database, the hot row and GET /items/<id> at 32 connections, candidates taking turns in every
repeat; medians, and each candidate's paired ratio to the first.

    .venv/bin/python bench/servers.py [--repeats 3] [--duration 10] ["NAME=COMMAND" ...]
    scripts/with-postgres .venv/bin/python bench/servers.py --engine postgres ...

Writes bench/results/servers.md (or --output). Every candidate gets the environment `make serve` gets.
Needs wrk and bench/requirements.txt, which `make bench` installs.
"""

import argparse
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # bench/run.py, beside this file

SERVE = "make --no-print-directory -s serve"  # granian, config/serve.py
# gunicorn's workers get what config/serve.py gives granian's: a folder for their metrics.
GUNICORN = "env PROMETHEUS_MULTIPROC_DIR=$METRICS .venv/bin/gunicorn config.wsgi --bind 127.0.0.1:$PORT"
ENGINES = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
CANDIDATES = {
    "granian, 2 workers x 1 thread": f"env WEB_CONCURRENCY=2 THREADS=1 {SERVE}",
    "granian, 4 workers x 1 thread": f"env WEB_CONCURRENCY=4 THREADS=1 {SERVE}",
    "granian, 2 workers x 4 threads": f"env WEB_CONCURRENCY=2 THREADS=4 {SERVE}",
    "gunicorn sync, 2 workers": f"{GUNICORN} --workers 2",
    "gunicorn sync, 4 workers": f"{GUNICORN} --workers 4",
    "gunicorn gthread, 2 workers x 4 threads": f"{GUNICORN} --workers 2 --threads 4",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("candidates", nargs="*", help='"NAME=COMMAND"; default: the built-in list')
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--engine", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--output", default="servers.md", help="file name in bench/results/")
    args = parser.parse_args()
    args.workers = args.threads = None
    args.wrk_threads = 1
    candidates = dict(c.split("=", 1) for c in args.candidates) or CANDIDATES

    env, _, _, workdir = run.prepare(args.engine, args, run.ID_SET, "servers")

    samples = {(name, workload): [] for name in candidates for workload in ("hot_row", "get_item")}
    for repeat in range(1, args.repeats + 1):
        for name, command in candidates.items():
            metrics = tempfile.mkdtemp(dir=workdir)
            command = command.replace("$PORT", env["PORT"]).replace("$METRICS", metrics)
            server = run.start_server(command, env, workdir / "server.log")
            try:
                for workload in ("hot_row", "get_item"):
                    run.run_wrk(workload, 32, args.warmup, env, args, server.pid)
                    sample = run.run_wrk(workload, 32, args.duration, env, args, server.pid)
                    samples[name, workload].append(sample)
                    print(f"r{repeat} {name:<42} {workload:<9} {sample['rps']:7.1f} req/s "
                          f"p50 {sample['p50_ms']:6.1f} p99 {sample['p99_ms']:6.1f} ms "
                          f"errors {sample['errors']}", flush=True)  # fmt: skip
            finally:
                run.stop_server(server)

    lines = [
        f"# Production server candidates ({ENGINES[args.engine]}, 32 connections)",
        "",
        f"Median of {args.repeats} repeats, {args.duration:g} s each, candidates taking turns. "
        "A paired ratio is the median over repeats of the candidate's figure over the first "
        f"candidate's in the same repeat. Command: `{shlex.join(['bench/servers.py', *sys.argv[1:]])}`.",
        "",
        "| candidate | hot row req/s | hot row p99 ms | GET item req/s | GET item p99 ms | errors "
        "| hot row / first's, paired | GET item / first's, paired |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    first = next(iter(candidates))
    for name in candidates:
        hot, get = samples[name, "hot_row"], samples[name, "get_item"]
        errors = sum(s["errors"] for s in hot + get)
        paired = [
            statistics.median(
                s["rps"] / f["rps"] for s, f in zip(samples[name, w], samples[first, w], strict=True)
            )
            for w in ("hot_row", "get_item")
        ]
        lines.append(
            f"| {name} | {statistics.median(s['rps'] for s in hot):.0f} "
            f"| {statistics.median(s['p99_ms'] for s in hot):.1f} "
            f"| {statistics.median(s['rps'] for s in get):.0f} "
            f"| {statistics.median(s['p99_ms'] for s in get):.1f} | {errors} "
            f"| {paired[0]:.2f} | {paired[1]:.2f} |"
        )
    run.RESULTS.mkdir(parents=True, exist_ok=True)
    (run.RESULTS / args.output).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
