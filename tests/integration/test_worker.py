"""The worker (inventory/worker.py): its lease, with the service's clock replaced by one that
stands still until a test moves it, and its rounds, with every duty replaced by a recorder, so
that a test says which duty ran, which failed, and what the others did then."""

import datetime
import threading
import uuid

import pytest
from django.db import OperationalError, connection

from inventory import clock, idempotency, worker
from inventory.models import Lease

pytestmark = pytest.mark.django_db

T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
NAME = "worker"


@pytest.fixture(autouse=True)
def now(monkeypatch):
    """The service's clock: T0 until a test moves it (now.advance(seconds))."""

    class FakeClock:
        def __init__(self):
            self.now = T0

        def __call__(self):
            return self.now

        def advance(self, seconds: float) -> None:
            self.now += datetime.timedelta(seconds=seconds)

    fake = FakeClock()
    monkeypatch.setattr(clock, "now", fake)
    return fake


@pytest.fixture(autouse=True)
def connection_kept(monkeypatch):
    """A round starts by dropping a broken or old connection, as Django does around a request;
    here that would end the test's transaction, so, as Django's TestCase does for requests, not."""
    monkeypatch.setattr(worker, "close_old_connections", lambda: None)


@pytest.fixture
def monotonic(monkeypatch):
    """The worker's monotonic clock (rounds and pauses), standing still until a test moves it."""

    class Monotonic:
        def __init__(self):
            self.now = 1000.0

        def __call__(self):
            return self.now

    fake = Monotonic()
    monkeypatch.setattr(worker.time, "monotonic", fake)
    return fake


class Duties:
    """Recorders in place of every duty the worker calls: `calls` lists them in order, and a
    duty given in `failing` raises its exception instead."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[str, dict]] = []
        self.failing: dict[str, Exception] = {}
        self.swept: list[int] = []  # what each call of the sweep returns, in turn (then 0)

        def recorder(name):
            def call(**kwargs):
                self.calls.append((name, kwargs))
                if name in self.failing:
                    raise self.failing[name]
                if name == "holds_expire_due":
                    return self.swept.pop(0) if self.swept else 0
                return 0

            return call

        found = {
            ("holds", "holds_expire_due"): recorder("holds_expire_due"),
            ("webhooks", "deliver_due"): recorder("deliver_due"),
            ("events", "events_prune"): recorder("events_prune"),
        }
        monkeypatch.setattr(worker, "duty", lambda module, name: found.get((module, name)))
        monkeypatch.setattr(idempotency, "idempotency_keys_prune", recorder("idempotency_keys_prune"))

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def clear(self) -> None:
        self.calls.clear()


@pytest.fixture
def duties(monkeypatch) -> Duties:
    return Duties(monkeypatch)


def holder() -> str:
    return Lease.objects.get(name=NAME).holder


def expires_at() -> datetime.datetime:
    return Lease.objects.get(name=NAME).expires_at


# The lease


def test_the_first_worker_takes_a_free_lease_and_a_second_does_not():
    assert worker.lease_take(name=NAME, holder="a", seconds=15)
    assert not worker.lease_take(name=NAME, holder="b", seconds=15)
    assert holder() == "a"
    assert expires_at() == T0 + datetime.timedelta(seconds=15)


def test_the_lease_passes_on_once_its_holder_stops_renewing_past_expiry(now):
    assert worker.lease_take(name=NAME, holder="a", seconds=15)
    now.advance(14.999)
    assert not worker.lease_take(name=NAME, holder="b", seconds=15)
    now.advance(0.001)  # the instant it expires
    assert worker.lease_take(name=NAME, holder="b", seconds=15)
    assert holder() == "b"
    assert expires_at() == T0 + datetime.timedelta(seconds=30)
    # The late holder cannot take it back, nor renew it.
    assert not worker.lease_take(name=NAME, holder="a", seconds=15)
    assert holder() == "b"


def test_renewing_extends_the_lease_past_its_first_expiry(now):
    assert worker.lease_take(name=NAME, holder="a", seconds=15)
    now.advance(10)
    assert worker.lease_take(name=NAME, holder="a", seconds=15)
    assert expires_at() == T0 + datetime.timedelta(seconds=25)
    now.advance(10)  # past the first expiry, within the renewed one
    assert not worker.lease_take(name=NAME, holder="b", seconds=15)
    assert holder() == "a"


def test_a_holder_that_renews_after_expiry_keeps_the_lease_if_nobody_took_it(now):
    assert worker.lease_take(name=NAME, holder="a", seconds=15)
    now.advance(60)
    assert worker.lease_take(name=NAME, holder="a", seconds=15)
    assert expires_at() == T0 + datetime.timedelta(seconds=75)


def test_a_released_lease_is_taken_at_once_and_only_its_holder_releases_it():
    assert worker.lease_take(name=NAME, holder="a", seconds=15)
    assert not worker.lease_release(name=NAME, holder="b")
    assert holder() == "a"
    assert worker.lease_release(name=NAME, holder="a")
    assert worker.lease_take(name=NAME, holder="b", seconds=15)
    assert holder() == "b"


def test_leases_of_other_names_are_held_apart():
    assert worker.lease_take(name=NAME, holder="a", seconds=15)
    assert worker.lease_take(name="other", holder="b", seconds=15)
    assert Lease.objects.get(name="other").holder == "b"


def race_for_the_lease(takers: int, prefix: str) -> list[str]:
    """`takers` threads, each on a connection of its own, take the lease at once: who won."""
    barrier = threading.Barrier(takers)
    won: list[str] = []

    def take(i):
        try:
            barrier.wait()
            if worker.lease_take(name=NAME, holder=f"{prefix}-{i}", seconds=15):
                won.append(f"{prefix}-{i}")
        finally:
            connection.close()

    threads = [threading.Thread(target=take, args=(i,)) for i in range(takers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return won


@pytest.mark.django_db(transaction=True)
def test_of_workers_racing_for_a_free_or_an_expired_lease_exactly_one_wins(now):
    """A free lease (the INSERT's race) and an expired one (the UPDATE's race)."""
    if connection.vendor == "sqlite" and connection.is_in_memory_db():
        pytest.skip("the in-memory test database shares one connection between threads")
    won = race_for_the_lease(8, "free")
    assert len(won) == 1, won
    assert holder() == won[0]
    now.advance(60)
    won = race_for_the_lease(8, "expired")
    assert len(won) == 1, won
    assert holder() == won[0]


def test_holder_names_are_unique_per_process_and_fit_the_column():
    names = {worker.holder_name() for _ in range(100)}
    assert len(names) == 100
    assert all(len(name) <= Lease._meta.get_field("holder").max_length for name in names)


# The rounds


def test_only_the_worker_holding_the_lease_runs_its_duties(now, duties):
    a, b = worker.Worker(holder="a"), worker.Worker(holder="b")
    assert a.round()
    assert duties.names() == [
        "holds_expire_due",
        "deliver_due",
        "events_prune",
        "idempotency_keys_prune",
    ]
    duties.clear()
    assert b.round()
    assert duties.calls == []
    assert holder() == "a"


def test_a_worker_takes_over_when_the_holder_stops_renewing_and_the_old_one_stops_working(now, duties):
    a, b = worker.Worker(holder="a"), worker.Worker(holder="b")
    a.round()
    now.advance(worker.LEASE_SECONDS)  # a's rounds stopped (a stopped process, a lost host)
    duties.clear()
    b.round()
    assert holder() == "b"
    assert "holds_expire_due" in duties.names()
    duties.clear()
    a.round()  # a comes back: it finds the lease taken and does nothing
    assert duties.calls == []
    assert (a.held, b.held) == (False, True)


def test_the_sweep_runs_until_a_batch_comes_back_short(duties):
    duties.swept = [worker.SWEEP_LIMIT, worker.SWEEP_LIMIT, 7]
    worker.Worker(holder="a").round()
    sweeps = [kwargs for name, kwargs in duties.calls if name == "holds_expire_due"]
    assert sweeps == [{"limit": worker.SWEEP_LIMIT}] * 3


def test_a_backlog_is_swept_for_at_most_the_budget_and_delivery_still_runs(duties, monotonic, monkeypatch):
    batches = []

    def full_batch(**kwargs):
        batches.append(kwargs)
        monotonic.now += 1.0  # each batch takes a second
        return worker.SWEEP_LIMIT

    found = worker.duty
    monkeypatch.setattr(
        worker, "duty", lambda module, name: full_batch if name == "holds_expire_due" else found(module, name)
    )
    worker.Worker(holder="a").round()
    assert len(batches) == worker.SWEEP_BUDGET_SECONDS
    assert "deliver_due" in duties.names()


def test_a_failing_duty_is_logged_and_the_others_still_run(duties, caplog):
    duties.failing["holds_expire_due"] = RuntimeError("a bug in the sweep")
    a = worker.Worker(holder="a")
    assert a.round()  # not the database: the next round comes as usual
    assert duties.names() == ["holds_expire_due", "deliver_due", "events_prune", "idempotency_keys_prune"]
    assert "holds.holds_expire_due failed" in caplog.text
    assert "a bug in the sweep" in caplog.text
    duties.clear()
    a.round()  # and it is tried again at the next round
    assert duties.names() == ["holds_expire_due", "deliver_due"]


def test_a_database_error_in_a_duty_makes_the_next_round_wait_longer(duties):
    duties.failing["deliver_due"] = OperationalError("server closed the connection unexpectedly")
    assert not worker.Worker(holder="a").round()
    assert duties.names() == ["holds_expire_due", "deliver_due", "events_prune", "idempotency_keys_prune"]


def test_a_database_that_is_down_does_not_stop_the_worker(duties, monkeypatch, monotonic, caplog):
    down = True

    def lease_take(**kwargs):
        if down:
            raise OperationalError("connection refused")
        return True

    monkeypatch.setattr(worker, "lease_take", lease_take)
    monkeypatch.setattr(worker, "lease_release", lambda **kwargs: True)
    a = worker.Worker(holder="a")
    pauses = []

    def pause(until):
        pauses.append(until - monotonic.now)
        if len(pauses) == 4:
            nonlocal down
            down = False  # the database is back
        if len(pauses) == 6:
            a.stop()

    monkeypatch.setattr(a, "_pause", pause)
    a.run()
    assert pauses == [2.0, 4.0, 8.0, 16.0, 1.0, 1.0]
    assert duties.names()[:2] == ["holds_expire_due", "deliver_due"]
    assert "could not renew the lease" in caplog.text
    assert "the database answers again, after 4 failed rounds" in caplog.text


def test_rounds_come_further_apart_while_the_database_fails_up_to_a_bound():
    assert [worker.pause_after(n) for n in range(8)] == [1, 2, 4, 8, 16, 30, 30, 30]


def test_pruning_runs_at_the_first_round_then_every_ten_minutes(duties, monotonic):
    a = worker.Worker(holder="a")
    a.round()
    monotonic.now += worker.PRUNE_EVERY_SECONDS - 1
    a.round()
    monotonic.now += 1
    a.round()
    prunes = [call for call in duties.calls if call[0].endswith("prune")]
    assert (
        prunes
        == [
            ("events_prune", {"older_than_days": 7.0}),
            ("idempotency_keys_prune", {"older_than_hours": 24.0}),
        ]
        * 2
    )
    assert duties.names().count("deliver_due") == 3


def test_events_are_pruned_after_the_retention_setting(duties, settings):
    settings.EVENTS_RETENTION_DAYS = 30.0
    worker.Worker(holder="a").round()
    assert ("events_prune", {"older_than_days": 30.0}) in duties.calls


def test_a_duty_that_does_not_exist_yet_is_skipped_and_reported_once(monkeypatch, caplog):
    assert worker.duty("no_such_module", "run") is None
    assert worker.duty("idempotency", "no_such_function") is None
    assert worker.duty("idempotency", "idempotency_keys_prune") is idempotency.idempotency_keys_prune
    monkeypatch.setattr(worker, "duty", lambda module, name: None)
    a = worker.Worker(holder="a")
    assert a.round()
    assert a.round()
    assert caplog.text.count("inventory.webhooks.deliver_due does not exist") == 1


def test_a_stopped_worker_gives_the_lease_up(duties, monkeypatch):
    a = worker.Worker(holder="a")
    original = a.round

    def round_then_stop():
        healthy = original()
        a.stop()
        return healthy

    monkeypatch.setattr(a, "round", round_then_stop)
    a.run()
    assert "holds_expire_due" in duties.names()
    assert not Lease.objects.filter(name=NAME).exists()
    assert worker.lease_take(name=NAME, holder="b", seconds=15)


def test_a_worker_whose_parent_is_gone_stops(duties):
    not_our_parent = 2**22 + uuid.uuid4().int % 1000  # above Linux's largest pid
    worker.Worker(holder="a", parent_pid=not_our_parent).run()
    assert duties.calls == []
