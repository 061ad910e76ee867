"""CPU per hot-row PATCH /items/<id>/qty through the service's WSGI application in one
process, without an HTTP server or a load generator: the figure that the code, not the
machine's load, sets. On PostgreSQL the CPU of the process's PostgreSQL backend is added.
Compares checkouts of the code, which take turns in every round.

    .venv/bin/python bench/request_cpu.py NAME=CHECKOUT [NAME=CHECKOUT ...]
    scripts/with-postgres .venv/bin/python bench/request_cpu.py --engine postgres NAME=CHECKOUT ...

Each checkout runs in a child process of its own, with its own virtualenv (CHECKOUT/.venv):
a token, an item, 300 requests to warm up, then `--requests` requests timed `--repeats`
times (the median is the round's figure). CPU is the process's user + system time; a
PostgreSQL backend's is read from /proc (so PostgreSQL must run on this machine). The request
log line is left out (logging disabled), as are the metrics' files (no multiprocess mode).
A paired ratio is the median over rounds of a checkout's figure over the first's in the same
round. Writes bench/results/request_cpu-<engine>.md.
"""

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--engine", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("candidates", nargs="*", metavar="NAME=CHECKOUT")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    candidates = [candidate.split("=", 1) for candidate in args.candidates]
    if not candidates or any(len(candidate) != 2 for candidate in candidates):
        parser.error("give one or more NAME=CHECKOUT")
    if args.engine == "postgres" and not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        parser.error("--engine postgres needs DATABASE_URL (scripts/with-postgres)")
    figures: dict[str, list[dict]] = {name: [] for name, _ in candidates}
    for round_ in range(1, args.rounds + 1):
        for name, checkout in candidates:
            figure = run_child(args, Path(checkout).resolve())
            figures[name].append(figure)
            cpu, database = figure["cpu_us"], figure["database_us"]
            print(f"r{round_} {name:40} cpu {cpu:6.0f} us, database {database:6.0f} us")
    report(args, candidates, figures)


def run_child(args, checkout: Path) -> dict:
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="config.settings", PYTHONPATH=str(checkout))
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with tempfile.TemporaryDirectory() as workdir:
        if args.engine == "sqlite":
            env["DATABASE_URL"] = f"sqlite:///{workdir}/db.sqlite3"
        command = [
            str(checkout / ".venv" / "bin" / "python"),
            __file__,
            "--child",
            "--requests",
            str(args.requests),
            "--repeats",
            str(args.repeats),
        ]
        done = subprocess.run(command, cwd=checkout, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{checkout}: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child(args) -> None:
    """In the checkout's directory and virtualenv: time its WSGI application."""
    import io
    import logging
    import uuid

    import django

    django.setup()
    logging.disable(logging.CRITICAL)
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from django.db import connection

    from config.wsgi import application
    from inventory import tokens

    suffix = uuid.uuid4().hex[:8]  # several runs may share one PostgreSQL database
    token = tokens.token_create(name=f"request-cpu-{suffix}", scope="write")

    def call(method: str, path: str, body: bytes) -> tuple[str, bytes]:
        environ = {
            "REQUEST_METHOD": method,
            "PATH_INFO": path,
            "QUERY_STRING": "",
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "HTTP_HOST": "localhost",
            "HTTP_AUTHORIZATION": f"Bearer {token}",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
        }
        status = []
        answer = b"".join(application(environ, lambda line, headers, exc_info=None: status.append(line)))
        return status[0], answer

    _, created = call("POST", "/items", json.dumps({"name": f"hot-{suffix}", "qty": 10**12}).encode())
    path = f"/items/{json.loads(created)['id']}/qty"

    def patch() -> None:
        status, answer = call("PATCH", path, b'{"delta": -1}')
        if not status.startswith("200"):
            sys.exit(f"PATCH answered {status}: {answer[:300]!r}")

    for _ in range(300):
        patch()
    backend = None
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backend = cursor.fetchone()[0]
    cpu, database = [], []
    for _ in range(args.repeats):
        started, database_started = time.process_time(), database_cpu(backend)
        for _ in range(args.requests):
            patch()
        cpu.append((time.process_time() - started) / args.requests * 1e6)
        database.append((database_cpu(backend) - database_started) / args.requests * 1e6)
    print(json.dumps({"cpu_us": statistics.median(cpu), "database_us": statistics.median(database)}))


def database_cpu(pid: int | None) -> float:
    """Seconds of CPU the PostgreSQL backend `pid` has used (0 without one), from /proc (proc(5))."""
    if pid is None:
        return 0.0
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def report(args, candidates, figures) -> None:
    first = candidates[0][0]

    def total(figure: dict) -> float:
        return figure["cpu_us"] + figure["database_us"]

    lines = [
        f"# CPU per hot-row PATCH in one process ({args.engine})",
        "",
        f"Median of {args.rounds} rounds, checkouts taking turns; in each round the median of "
        f"{args.repeats} timings of {args.requests} requests. Command: `{command_line()}`.",
        "",
        "| checkout | process CPU us | database CPU us | total us | total / first's, paired |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, _ in candidates:
        rows = figures[name]
        paired = statistics.median(
            total(row) / total(base) for row, base in zip(rows, figures[first], strict=True)
        )
        lines.append(
            f"| {name} | {statistics.median(row['cpu_us'] for row in rows):.0f} "
            f"| {statistics.median(row['database_us'] for row in rows):.0f} "
            f"| {statistics.median(total(row) for row in rows):.0f} | {paired:.2f} |"
        )
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"request_cpu-{args.engine}.md").write_text(text)
    print(text)


def command_line() -> str:
    wrapper = ["scripts/with-postgres"] if "postgres" in sys.argv else []
    return shlex.join([*wrapper, ".venv/bin/python", "bench/request_cpu.py", *sys.argv[1:]])


if __name__ == "__main__":
    main()
