"""The server layer: what the production server (`make serve`, granian) does on its own,
before the service sees a request or after it has stopped."""

import time
from pathlib import Path

import pytest

from tests.e2e.conftest import Server

pytestmark = pytest.mark.e2e


def metrics_dirs(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("inventory-metrics-*"))


def wait_until_gone(tmp: Path, seconds: float = 20) -> list[Path]:
    """The metrics folders still there after `seconds`: make exits on SIGTERM without waiting
    for the server it started, so the server may still be cleaning up when stop() returns."""
    deadline = time.monotonic() + seconds
    while metrics_dirs(tmp) and time.monotonic() < deadline:
        time.sleep(0.1)
    return metrics_dirs(tmp)


@pytest.fixture
def tmp(tmp_path) -> Path:
    """The server's temporary folder (TMPDIR), empty and ours alone."""
    path = tmp_path / "tmp"
    path.mkdir()
    return path


def test_a_stopped_server_leaves_no_metrics_folder(database_url, tmp_path, tmp):
    server = Server(database_url, tmp_path)
    server.extra_env = {"TMPDIR": str(tmp), "WEB_CONCURRENCY": "1"}
    try:
        server.start()
        assert len(metrics_dirs(tmp)) == 1  # where the workers write their samples
    finally:
        server.stop()
    assert wait_until_gone(tmp) == []


def test_a_folder_left_by_kill_9_is_removed_by_the_next_start(database_url, tmp_path, tmp):
    first = Server(database_url, tmp_path)
    first.extra_env = {"TMPDIR": str(tmp), "WEB_CONCURRENCY": "1"}
    first.start()
    first.kill()
    left = metrics_dirs(tmp)
    assert len(left) == 1  # kill -9: nobody could clean up

    second = Server(database_url, tmp_path)
    second.extra_env = first.extra_env
    try:
        second.start()
        assert left[0] not in metrics_dirs(tmp)
        assert len(metrics_dirs(tmp)) == 1  # its own
    finally:
        second.stop()
    assert wait_until_gone(tmp) == []
