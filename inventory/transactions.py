"""Running a write transaction again when the database aborted it for a conflict."""

import functools
import time
from collections.abc import Callable

from django.db import OperationalError, connection

# PostgreSQL SQLSTATEs after which the whole transaction may simply run again
# (PostgreSQL documentation, "Serialization Failure Handling").
_RETRYABLE = {"40001", "40P01"}  # serialization_failure, deadlock_detected
_ATTEMPTS = 5
# No retry starts this many seconds after the first attempt did: each attempt may wait for
# locks again, and a client is owed an answer within the contract's bound.
_RETRY_WITHIN_SECONDS = 5.0


def retry_on_conflict(service: Callable) -> Callable:
    """Run a write again (up to 5 times, 10 ms to 80 ms apart, none starting later than 5 s
    after the first) when PostgreSQL aborted it for a deadlock or serialization failure:
    nothing of it was committed, so a second run is the same request, not a repeat. Any other
    error, and the last conflict, are raised as they are."""

    @functools.wraps(service)
    def wrapper(*args, **kwargs):
        started = time.monotonic()
        for attempt in range(_ATTEMPTS):
            try:
                return service(*args, **kwargs)
            except OperationalError as exc:
                sqlstate = getattr(exc.__cause__, "sqlstate", None)
                last = attempt == _ATTEMPTS - 1 or time.monotonic() - started > _RETRY_WITHIN_SECONDS
                if sqlstate not in _RETRYABLE or last or connection.in_atomic_block:
                    raise
                time.sleep(0.01 * 2**attempt)
        raise AssertionError("unreachable")

    return wrapper
