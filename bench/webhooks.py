"""Webhook delivery rate: events per second one webhook delivers to a receiver that answers 200
at once, from the first arrival to the last, median of the repeats.

    .venv/bin/python bench/webhooks.py [--events 3000] [--repeats 3]

`make serve` (web and worker) on a fresh SQLite database with WEBHOOKS_ALLOW_PRIVATE=1, a
receiver on loopback (http.server in threads). Each repeat makes a webhook on `*`, disables it,
writes --events deltas (batches of POST /adjustments, one qty_changed event per line) and
enables it again: delivery then starts from a backlog of exactly that many events, so the
figure is the delivery rate, not the rate of the writes. Writes bench/results/webhooks.md.
"""

import argparse
import http.client
import http.server
import json
import shlex
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # bench/run.py, beside this file

SERVE = "make --no-print-directory -s serve"
ITEMS = 100  # the deltas go round these, one change of each per batch
DEADLINE = 1800  # s for a repeat's backlog to arrive: finite, generous for a loaded machine


class Receiver:
    """Answers every POST 200 at once; records each event id's first arrival (time.monotonic)."""

    def __init__(self):
        self.first: dict[str, float] = {}
        self.requests = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                at = time.monotonic()
                with receiver.lock:
                    receiver.requests += 1
                    receiver.first.setdefault(self.headers.get("webhook-id", ""), at)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"

    def reset(self) -> None:
        with self.lock:
            self.first.clear()
            self.requests = 0


def call(port: int, token: str, method: str, path: str, body=None) -> tuple[int, dict | None]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        response = connection.getresponse()
        raw = response.read()
        return response.status, (json.loads(raw) if raw else None)
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    args.workers = args.threads = None

    workdir = Path(tempfile.mkdtemp(prefix="bench-webhooks-"))
    env = run.server_env(f"sqlite:///{workdir / 'bench.sqlite3'}", run.free_port(), args)
    env["WEBHOOKS_ALLOW_PRIVATE"] = "1"
    port = int(env["PORT"])
    migrated = run.manage(env, "migrate", "--noinput")
    if migrated.returncode != 0:
        sys.exit(migrated.stdout + migrated.stderr)
    token = run.manage(env, "token", "create", "bench-admin", "--scope", "admin").stdout.strip()
    receiver = Receiver()
    server = run.start_server(SERVE, env, workdir / "server.log")
    samples = []
    try:
        items = []
        for i in range(ITEMS):
            status, item = call(port, token, "POST", "/items", {"name": f"bench {i}", "qty": 1_000_000})
            assert status == 201, item
            items.append(item["id"])
        for repeat in range(1, args.repeats + 1):
            receiver.reset()
            status, hook = call(port, token, "POST", "/webhooks", {"url": receiver.url, "events": ["*"]})
            assert status == 201, hook
            status, body = call(port, token, "PATCH", f"/webhooks/{hook['id']}", {"enabled": False})
            assert status == 200, body
            written = 0
            while written < args.events:
                lines = items[: min(ITEMS, args.events - written)]
                status, body = call(
                    port, token, "POST", "/adjustments", {"changes": [{"id": i, "delta": 1} for i in lines]}
                )
                assert status == 200, body
                written += len(lines)
            status, body = call(port, token, "PATCH", f"/webhooks/{hook['id']}", {"enabled": True})
            assert status == 200, body
            deadline = time.monotonic() + DEADLINE
            while len(receiver.first) < args.events:
                if time.monotonic() > deadline:
                    sys.exit(f"only {len(receiver.first)} of {args.events} events arrived in {DEADLINE} s")
                time.sleep(0.05)
            with receiver.lock:
                arrivals = sorted(receiver.first.values())
                requests = receiver.requests
            seconds = arrivals[-1] - arrivals[0]
            rate = (len(arrivals) - 1) / seconds
            samples.append(rate)
            print(
                f"r{repeat}: {len(arrivals)} events in {seconds:.2f} s = {rate:.1f} events/s "
                f"({requests - len(arrivals)} duplicates)",
                flush=True,
            )
            status, body = call(port, token, "DELETE", f"/webhooks/{hook['id']}")
            assert status == 204, body
    finally:
        run.stop_server(server)

    command = shlex.join([".venv/bin/python", "bench/webhooks.py", *sys.argv[1:]])
    lines = [
        "# Webhook delivery rate (SQLite, one webhook, a receiver answering 200 at once)",
        "",
        f"Median of {args.repeats} repeats of a backlog of {args.events} events (`*`), from the "
        "first arrival to the last; one attempt at a time per webhook, as the contract's order "
        f"requires. Command: `{command}`.",
        "",
        "| repeat | events/s |",
        "| --- | ---: |",
        *(f"| {i} | {rate:.1f} |" for i, rate in enumerate(samples, 1)),
        f"| **median** | **{statistics.median(samples):.1f}** |",
    ]
    run.RESULTS.mkdir(parents=True, exist_ok=True)
    (run.RESULTS / "webhooks.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
