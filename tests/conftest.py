"""Fixtures every level of the tests shares: a fresh nats-server and a fresh database per test.

Each test gets its own nats-server because stream names are global and inbox keys such as
``submit:<stream seq>`` repeat from one server to the next; and its own database, so no test ever
sees another's rows. ``database_url`` runs a test once on SQLite and once on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from shared.embedded_nats import EmbeddedNats
from shared.operators import token_digest
from shared.settings import ServiceSettings

T = TypeVar("T")

POSTGRES_ENV = "ORDERFLOW_TEST_POSTGRES"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
# Every service the tests start knows one admin operator, and rpc.call acts as it
# (ORDERFLOW_TOKEN); tests of roles configure operators of their own.
TEST_OPERATOR_TOKEN = "tests-admin-token-0123456789"
os.environ.setdefault(
    "ORDERFLOW_OPERATORS",
    f'{{"tests": {{"role": "admin", "token_sha256": "{token_digest(TEST_OPERATOR_TOKEN)}"}}}}',
)
os.environ.setdefault("ORDERFLOW_TOKEN", TEST_OPERATOR_TOKEN)
AS_OPERATOR = {"Authorization": f"Bearer {TEST_OPERATOR_TOKEN}"}
POSTGRES_IMAGE = "postgres:16-alpine"


def settings_for(
    nats_url: str, database_url: str, tmp_path: Path, **changes: Any
) -> ServiceSettings:
    """Service settings with test timings: retries in a tenth of a second, not in seconds."""
    values: dict[str, Any] = {
        "home": tmp_path / "var",
        "nats_url": nats_url,
        "database_url": database_url,
        "http_port": 0,
        "nak_delay_s": 0.1,
        "max_deliver": 3,
        "outbox_sweep_s": 0.2,
        "ack_wait_s": 5,
    }
    values.update(changes)
    return ServiceSettings(**values)


async def eventually(
    check: Callable[[], Awaitable[T]], *, timeout: float = 10.0, what: str = "condition"
) -> T:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T = await check()
    while not last:
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        await asyncio.sleep(0.05)
        last = await check()
    return last


def order_doc(external_id: str | None = None, **changes: Any) -> dict[str, Any]:
    """A valid web submission (total 25.00 CNY); ``changes`` replace top-level fields."""
    doc: dict[str, Any] = {
        "channel": "web",
        "external_id": external_id or f"ext-{uuid.uuid4().hex[:12]}",
        "customer": {"name": "Mei Lin", "email": "mei.lin@example.com", "locale": "zh-CN"},
        "lines": [{"sku": "TEA-001", "quantity": 2, "unit_price": "12.50"}],
        "currency": "CNY",
        "shipping_address": {
            "name": "Mei Lin",
            "line1": "18 Longjing Road",
            "city": "Hangzhou",
            "postal_code": "310000",
            "country": "CN",
        },
        "priority": "normal",
    }
    doc.update(changes)
    return doc


def run_outside_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on a private loop in another thread.

    Sync fixtures cannot use the session's loop, and ``asyncio.run`` on the main thread would
    unset the loop pytest-asyncio keeps there.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, name="fixture-loop")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


@pytest.fixture
def nats_url(tmp_path: Path) -> Iterator[str]:
    server = EmbeddedNats(tmp_path / "nats")
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


async def _ping_postgres(dsn: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=5)
    await conn.close()


def _docker_reachable() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """DSN of a PostgreSQL server the tests may create databases on (checked once a session)."""
    dsn = os.environ.get(POSTGRES_ENV, DEFAULT_POSTGRES)
    try:
        run_outside_loop(_ping_postgres(dsn))
    except Exception as exc:
        reason = f"PostgreSQL not reachable at {dsn}: {exc}"
    else:
        yield dsn
        return
    if _docker_reachable():
        from testcontainers.community.postgres import PostgresContainer

        with PostgresContainer(POSTGRES_IMAGE, driver=None) as container:
            yield container.get_connection_url()
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must have PostgreSQL (set {POSTGRES_ENV} or start Docker)")
    pytest.skip(f"{reason}; set {POSTGRES_ENV} or start Docker")


async def _create_database(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_database(dsn: str, name: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(
    params=[
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    ]
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'service.db'}"
        return
    server: str = request.getfixturevalue("postgres_server")
    name = f"orderflow_t_{uuid.uuid4().hex}"
    run_outside_loop(_create_database(server, name))
    url = make_url(server).set(drivername="postgresql+asyncpg", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        run_outside_loop(_drop_database(server, name))
