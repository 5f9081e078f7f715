"""One NATS user per service and per channel (shared/nats_access.py), on a real nats-server:
a service cannot publish another service's events, a channel cannot submit as another channel,
and the four services still do all their work with only their own grants."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from shared import nats_access, streams
from shared.embedded_nats import EmbeddedNats
from shared.runtime import NatsAuth, StartupError, connect_nats
from shared.settings import ServiceSettings
from tests.cluster import system
from tests.conftest import eventually

pytestmark = pytest.mark.slow


class Secured:
    def __init__(self, server: EmbeddedNats, pw: dict[str, str]) -> None:
        self.server = server
        self.pw = pw
        self.clients: list[NATS] = []

    @property
    def url(self) -> str:
        return self.server.url

    async def connect(self, user: str, errors: list[str] | None = None) -> NATS:
        async def on_error(exc: Exception) -> None:
            if errors is not None:
                errors.append(str(exc))

        options = NatsAuth(user=user, password=self.pw[user]).options()
        nc = await nats.connect(self.url, error_cb=on_error, **options)
        self.clients.append(nc)
        return nc

    async def count(self, stream: str, subject: str = ">") -> int:
        admin = await self.connect(nats_access.ADMIN_USER)
        try:
            info = await admin.jetstream().stream_info(stream, subjects_filter=subject)
        except NotFoundError:
            return 0
        return sum((info.state.subjects or {}).values())

    def violations(self) -> list[str]:
        log = self.server.log_file
        assert log is not None
        return [line for line in log.read_text().splitlines() if "Violation" in line]


@pytest.fixture
def secured_server(tmp_path: Path) -> Iterator[tuple[EmbeddedNats, dict[str, str]]]:
    pw = system.passwords()
    server = EmbeddedNats(
        tmp_path / "nats",
        log_file=tmp_path / "nats.log",
        authorization=nats_access.render_authorization(nats_access.users(system.CHANNELS), pw),
    )
    server.start()
    try:
        yield server, pw
    finally:
        server.stop()


@pytest.fixture
async def secured(
    secured_server: tuple[EmbeddedNats, dict[str, str]],
) -> AsyncIterator[Secured]:
    s = Secured(*secured_server)
    admin = await s.connect(nats_access.ADMIN_USER)
    specs = (streams.SUBMISSIONS, streams.INTAKE, streams.INVENTORY)
    await streams.ensure_streams(admin.jetstream(), specs, ServiceSettings())
    try:
        yield s
    finally:
        for nc in s.clients:
            await nc.close()


async def refused(nc: NATS, subject: str) -> bool:
    """A JetStream publish that gets no ack: the server dropped it."""
    try:
        await nc.jetstream().publish(subject, b"{}", timeout=1.0)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        return True
    return False


async def test_a_service_cannot_publish_another_services_events(secured: Secured) -> None:
    errors: list[str] = []
    inventory = await secured.connect("inventory", errors)
    forged = "orderflow.intake.order_accepted.forged-1"
    assert await refused(inventory, forged)
    await eventually(
        lambda: asyncio.sleep(0, [e for e in errors if "permissions violation" in e.lower()]),
        what="the server's permissions violation",
    )
    assert any(forged in e for e in errors), errors
    assert await secured.count(streams.INTAKE.name) == 0
    # Its own events go through.
    ack = await inventory.jetstream().publish("orderflow.inventory.stock_reserved.o-1", b"{}")
    assert ack.stream == streams.INVENTORY.name
    # Nor may it take over intake's consumer or read intake's command requests.
    assert await refused(
        inventory, "$JS.API.CONSUMER.INFO.ORDERFLOW_SUBMISSIONS.intake-submissions"
    )
    await inventory.subscribe("_ORDERFLOW.deliver.intake-submissions")
    await inventory.subscribe("orderflow.rpc.intake.*")
    await inventory.flush()

    def logged_now() -> list[str]:
        return [v for v in secured.violations() if "Subscription Violation" in v]

    found = await eventually(
        lambda: asyncio.sleep(0, len(logged_now()) >= 2 and logged_now()),
        what="two subscription violations in the server log",
    )
    assert all("user:inventory" in v for v in found), found
    assert any("_ORDERFLOW.deliver.intake-submissions" in v for v in found)
    assert any("orderflow.rpc.intake.*" in v for v in found)


async def test_a_channel_cannot_submit_as_another_channel(secured: Secured) -> None:
    errors: list[str] = []
    web = await secured.connect(nats_access.channel_user("web"), errors)
    assert await refused(web, "orderflow.submit.wechat")
    # Nor go around intake's checks through its commands.
    with pytest.raises((nats.errors.TimeoutError, nats.errors.NoRespondersError)):
        await web.request("orderflow.rpc.intake.submit", b"{}", timeout=1.0)
    ack = await web.jetstream().publish("orderflow.submit.web", b"{}")
    assert ack.stream == streams.SUBMISSIONS.name
    assert await secured.count(streams.SUBMISSIONS.name, "orderflow.submit.wechat") == 0
    assert await secured.count(streams.SUBMISSIONS.name, "orderflow.submit.web") == 1
    publish_violations = [v for v in secured.violations() if "Publish Violation" in v]
    assert any("orderflow.submit.wechat" in v for v in publish_violations), publish_violations
    assert any("orderflow.rpc.intake.submit" in v for v in publish_violations)


async def test_the_four_services_work_with_only_their_own_grants(
    secured_server: tuple[EmbeddedNats, dict[str, str]], tmp_path: Path
) -> None:
    server, pw = secured_server

    def db(service: str) -> str:
        return f"sqlite+aiosqlite:///{tmp_path / service}.db"

    run = system.run_id()
    load = system.make_load(6, run)
    async with system.running_system(server.url, db, tmp_path, pw=pw):
        await system.restock(server.url, 100, pw)
        await system.submit(server.url, load, pw)
        await system.wait_until_all_delivered(db, 6, timeout=60)
    # Not one refusal while doing all of it (starting, consuming, publishing, answering).
    assert Secured(server, pw).violations() == []


async def test_wrong_credentials_are_refused_at_once_and_said_plainly(secured: Secured) -> None:
    started = asyncio.get_running_loop().time()
    with pytest.raises(StartupError, match="refused user 'intake': Authorization Violation"):
        await connect_nats(
            secured.url, "wrong", timeout=20, auth=NatsAuth(user="intake", password="wrong")
        )
    with pytest.raises(StartupError, match="refused these credentials"):
        await connect_nats(secured.url, "anonymous", timeout=20)
    # Not after the whole timeout: retrying cannot make the server change its mind.
    assert asyncio.get_running_loop().time() - started < 10
