"""Prometheus metrics. Under `make serve` every worker writes its samples to
PROMETHEUS_MULTIPROC_DIR (set up in config/serve.py), and /metrics adds them up."""

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

REQUESTS = Counter("inventory_http_requests", "HTTP requests answered.", ["method", "route", "status"])
LATENCY = Histogram(
    "inventory_http_request_duration_seconds",
    "Time to answer an HTTP request.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
QTY_TRANSITIONS = Counter("inventory_qty_transitions", "Committed changes of qty.", ["kind"])
REJECTED_TRANSITIONS = Counter("inventory_rejected_transitions", "Writes refused, by reason.", ["reason"])
HOLDS = Counter(
    "inventory_holds",
    "Holds by what happened to them: created, committed, released, expired, refused.",
    ["outcome"],
)
DATABASE_ERRORS = Counter("inventory_database_errors", "Database errors met while answering.", ["kind"])


def exposition() -> tuple[bytes, str]:
    """The current samples of every process, in the Prometheus text format."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
