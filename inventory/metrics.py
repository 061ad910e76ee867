"""Prometheus metrics. Under `make serve` every worker writes its samples to
PROMETHEUS_MULTIPROC_DIR (set up in config/serve.py), and /metrics adds them up."""

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
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
EVENTS = Counter("inventory_events", "Events written to the change feed, by type.", ["type"])
DATABASE_ERRORS = Counter("inventory_database_errors", "Database errors met while answering.", ["kind"])
WEBHOOK_DELIVERIES = Counter(
    "inventory_webhook_deliveries",
    "Webhook delivery attempts by outcome: delivered (a 2xx within 10 s) or failed.",
    ["outcome"],
)
# Set by the worker at every round, one series per webhook (at most 100). In multiprocess mode
# the value shown is the one set last by a live process: the worker holding the lease now, not
# one that held it before. prometheus_client cannot remove a series there (its docs: removal
# "has not been implemented in multi-process mode"), so a deleted webhook's series is set to 0
# instead, and stays until the worker's samples are let go (multiprocess.mark_process_dead).
WEBHOOK_OLDEST_UNDELIVERED = Gauge(
    "inventory_webhook_oldest_undelivered_seconds",
    "Age of the oldest event a webhook has still to acknowledge (0: none), by webhook id.",
    ["webhook"],
    multiprocess_mode="livemostrecent",
)


def exposition() -> tuple[bytes, str]:
    """The current samples of every process, in the Prometheus text format."""
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
