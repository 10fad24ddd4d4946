"""Fixtures of the flow tests: an isolated PREFECT_HOME, Prefect's test harness, a temp store."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before any test module imports Prefect: never touch the developer's ~/.prefect profile/db.
# Removed when the test process exits, so runs do not pile up Prefect homes in the temp dir.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="msjoe-prefect-home-")
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_TO_API_BATCH_INTERVAL", "0.3")


@pytest.fixture(scope="package")
def prefect_harness() -> Iterator[None]:
    """One temporary Prefect server (test harness) shared by the flow tests, stopped after them."""
    from prefect.settings import PREFECT_HOME, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    with temporary_settings({PREFECT_HOME: os.environ["PREFECT_HOME"]}):
        with prefect_test_harness(server_startup_timeout=180):
            yield


@pytest.fixture
def store_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh SQLite metadata store for this test, given to the flow through MSJOE_DB_URL."""
    url = f"sqlite:///{(tmp_path / 'store.db').as_posix()}"
    monkeypatch.setenv("MSJOE_DB_URL", url)
    return url
