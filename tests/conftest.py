"""Fixtures: a clean database and a real Redis for every test.

TEST_DATABASE_URL / TEST_REDIS_URL point the suite at real servers (CI: the machine's
PostgreSQL and Redis); unset, it uses SQLite and the embedded Redis under a temp folder.
Tests wipe what they use, so those URLs must never name production data.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as redis_lib
from sqlalchemy import text

from config import Config, load_config
from db import Base, Database, upgrade
from standins.receiver import Receiver, receiving
from tests.support import (
    API_TOKEN,
    BOOKING_SECRET,
    CLUB,
    CONNECT_SECRET,
    GYM,
    PLATFORM_ACCOUNT,
    PLATFORM_SECRET,
)
from workers.jobs import OUTBOUND
from workers.queue import Kind, get_queue, redis_url
from workers.runtime import reset_runtime
from workers.service import MismatchWorker


@pytest.fixture(scope="session")
def instance_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("instance")


@pytest.fixture(scope="session")
def database_url(instance_dir: Path) -> str:
    url = os.environ.get("TEST_DATABASE_URL") or f"sqlite:///{instance_dir / 'test.sqlite3'}"
    database = Database(load_config({"DATABASE_URL": url,
                                     "INSTANCE_PATH": str(instance_dir)}).database_url)
    url = database.url
    # Start from empty so the migrations themselves are under test.
    with database.engine.begin() as conn:
        Base.metadata.drop_all(conn)
        conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
    database.dispose()
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def test_redis_url(instance_dir: Path) -> Iterator[str]:
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        yield url
        return
    from workers.embedded_redis import stop_embedded_redis

    config = load_config({"INSTANCE_PATH": str(instance_dir)})
    yield redis_url(config)
    stop_embedded_redis(instance_dir)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, database_url: str, test_redis_url: str,
        instance_dir: Path) -> dict[str, str]:
    """The environment a test's service and workers read; tests may add to it."""
    values = {
        "DATABASE_URL": database_url,
        "REDIS_URL": test_redis_url,
        "INSTANCE_PATH": str(instance_dir),
        "STRIPE_WEBHOOK_SECRETS": PLATFORM_SECRET,
        "STRIPE_CONNECT_WEBHOOK_SECRETS": CONNECT_SECRET,
        "STRIPE_PLATFORM_ACCOUNT": PLATFORM_ACCOUNT,
        "API_TOKEN": API_TOKEN,
        "SECRET_KEY": "test-secret-key",
        "JOB_RETRY_INTERVALS": "0,0",
        "PUBLIC_BASE_URL": "http://mismatch.test",
        "MAIL_FROM": "Mismatch Detector <mismatch@venues.test>",
    }
    for key in ("STRIPE_SECRET_KEY", "STRIPE_API_BASE", "SMTP_URL", "SUPPORT_EMAIL",
                "PROMETHEUS_MULTIPROC_DIR"):
        monkeypatch.delenv(key, raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    reset_runtime()
    yield values
    reset_runtime()


@pytest.fixture
def config(env: dict[str, str]) -> Config:
    return load_config()


@pytest.fixture
def db(config: Config) -> Iterator[Database]:
    database = Database(config.database_url)
    _wipe(database)
    yield database
    database.dispose()


def _wipe(database: Database) -> None:
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with database.engine.begin() as conn:
        if database.is_sqlite:
            for name in tables:
                conn.execute(text(f"DELETE FROM {name}"))
        else:
            conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))


@pytest.fixture
def redis(config: Config) -> redis_lib.Redis:
    connection = redis_lib.Redis.from_url(redis_url(config))
    connection.flushdb()
    return connection


@pytest.fixture
def app(config: Config, db: Database, redis: redis_lib.Redis):  # type: ignore[no-untyped-def]
    from listener.app import create_app

    application = create_app(config, TESTING=True)
    yield application
    application.extensions["db"].dispose()


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


@pytest.fixture
def api(client):  # type: ignore[no-untyped-def]
    """The test client with the API bearer token."""

    class Api:
        headers = {"Authorization": f"Bearer {API_TOKEN}"}

        def get(self, url: str, **kw):  # type: ignore[no-untyped-def]
            return client.get(url, headers=self.headers, **kw)

        def put(self, url: str, json=None, **kw):  # type: ignore[no-untyped-def]
            return client.put(url, json=json, headers=self.headers, **kw)

        def post(self, url: str, json=None, **kw):  # type: ignore[no-untyped-def]
            return client.post(url, json=json, headers=self.headers, **kw)

        def patch(self, url: str, json=None, **kw):  # type: ignore[no-untyped-def]
            return client.patch(url, json=json, headers=self.headers, **kw)

        def delete(self, url: str, **kw):  # type: ignore[no-untyped-def]
            return client.delete(url, headers=self.headers, **kw)

    return Api()


def _burst(config: Config, kind: Kind | None = None) -> None:
    reset_runtime()
    queue = get_queue(config, kind)
    MismatchWorker([queue], connection=queue.connection).work(burst=True,
                                                               logging_level="WARNING")


@pytest.fixture
def work(config: Config, redis: redis_lib.Redis):  # type: ignore[no-untyped-def]
    """Drain the queue with a real RQ worker (in this process, burst mode)."""
    return lambda: _burst(config)


@pytest.fixture
def booking(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    """The booking product's receiver (standins/receiver.py) as BOOKING_WEBHOOK_URL, three
    retries at once; list it before the app's fixtures, so the app reads it."""
    with receiving(BOOKING_SECRET) as found:
        monkeypatch.setenv("BOOKING_WEBHOOK_URL", found.url)
        monkeypatch.setenv("BOOKING_WEBHOOK_SECRET", BOOKING_SECRET)
        monkeypatch.setenv("OUTBOUND_RETRY_SECONDS", "0,0,0")
        yield found


@pytest.fixture
def deliver(config: Config, redis: redis_lib.Redis):  # type: ignore[no-untyped-def]
    """Drain the outbound queue the same way (what `mismatch worker --outbound` runs)."""
    return lambda: _burst(config, OUTBOUND)


@pytest.fixture
def venues(api):  # type: ignore[no-untyped-def]
    """Two test-mode venues, GYM and CLUB, each with one admin; returns the API client."""
    for account, name in ((GYM, "Harbour Gym"), (CLUB, "City Club")):
        assert api.put(f"/api/venues/{account}", json={
            "name": name, "admin_emails": [f"admin@{name.split()[0].lower()}.test"],
            "livemode": False}).status_code == 201
    return api
