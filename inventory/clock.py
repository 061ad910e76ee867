"""The service's one clock. Hold expiry is decided by it, and tests move it."""

import datetime

from django.utils import timezone


def now() -> datetime.datetime:
    """The current time, timezone-aware (UTC). Hold expiry compares it with expires_at, so
    several app servers need synchronised clocks (NTP), as any expiry deadline does."""
    return timezone.now()
