"""/readyz answers 503 while NATS or the service's database is unreachable, and 200 again once it
is back; ``orderflow_dependency_up`` says which. The outage is a TCP proxy the test stops."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from sqlalchemy.engine import make_url

from shared.runtime import ServiceRuntime
from tests.conftest import _create_database, _drop_database, eventually, settings_for
from tests.integration.harness import running
from tests.integration.test_messaging import Script, create_probe
from tests.sre.proxy import TcpProxy

pytestmark = pytest.mark.slow


async def readiness(rt: ServiceRuntime) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{rt.http_port}/readyz") as response,
    ):
        return response.status, await response.json()


def dependency_up(rt: ServiceRuntime, dependency: str) -> float | None:
    return rt.metrics.registry.get_sample_value(
        "orderflow_dependency_up", {"service": rt.name, "dependency": dependency}
    )


async def flips(rt: ServiceRuntime, proxy: TcpProxy, dependency: str) -> None:
    async def status_is(code: int) -> dict[str, Any] | None:
        status, body = await readiness(rt)
        return body if status == code else None

    body = await eventually(lambda: status_is(200), timeout=20, what="ready before the outage")
    assert body == {"service": rt.name, "nats": True, "database": True}
    assert dependency_up(rt, dependency) == 1

    await proxy.stop()
    body = await eventually(
        lambda: status_is(503), timeout=20, what=f"not ready without {dependency}"
    )
    assert body[dependency] is False
    other = "database" if dependency == "nats" else "nats"
    assert body[other] is True
    assert dependency_up(rt, dependency) == 0

    await proxy.start()
    await eventually(lambda: status_is(200), timeout=30, what=f"ready again with {dependency} back")
    assert dependency_up(rt, dependency) == 1


async def test_not_ready_while_nats_is_unreachable_and_ready_again_after(
    nats_url: str, tmp_path: Path
) -> None:
    url = urlsplit(nats_url)
    proxy = TcpProxy(url.hostname or "127.0.0.1", url.port or 4222)
    port = await proxy.start()
    settings = settings_for(
        f"nats://127.0.0.1:{port}", f"sqlite+aiosqlite:///{tmp_path / 'probe.db'}", tmp_path
    )
    try:
        async with running(create_probe(settings, Script())) as rt:
            await flips(rt, proxy, "nats")
    finally:
        await proxy.stop()


@pytest.mark.postgres
async def test_not_ready_while_the_database_is_unreachable_and_ready_again_after(
    nats_url: str, postgres_server: str, tmp_path: Path
) -> None:
    server = make_url(postgres_server)
    proxy = TcpProxy(server.host or "127.0.0.1", server.port or 5432)
    port = await proxy.start()
    name = f"orderflow_t_{uuid.uuid4().hex}"
    await _create_database(postgres_server, name)
    url = server.set(drivername="postgresql+asyncpg", database=name, host="127.0.0.1", port=port)
    settings = settings_for(nats_url, url.render_as_string(hide_password=False), tmp_path)
    try:
        async with running(create_probe(settings, Script())) as rt:
            await flips(rt, proxy, "database")
    finally:
        await proxy.stop()
        await _drop_database(postgres_server, name)
