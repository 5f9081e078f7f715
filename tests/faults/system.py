"""What the fault tests run and break: the four services in this process against a nats-server
of the test's own, a load that keeps submitting through an outage, and a TCP proxy that can
refuse a service its PostgreSQL.

The services run in the test's event loop (not as processes) where the fault is outside them
(the broker, the database); ``kill -9`` of a service uses the launcher's processes instead
(tests/e2e/conftest.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import nats
import orjson
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from orderflow import demo
from orderflow.launcher import seed_catalogue
from services.fulfillment.app import create_service as create_fulfillment
from services.intake.app import create_service as create_intake
from services.intake.settings import IntakeSettings
from services.inventory.app import create_service as create_inventory
from services.notify.app import create_service as create_notify
from shared import subjects
from shared.embedded_nats import EmbeddedNats, free_port
from shared.runtime import ServiceRuntime
from shared.settings import ServiceSettings
from tests.conftest import settings_for
from tests.sre.proxy import TcpProxy as ControlledProxy

log = logging.getLogger(__name__)
T = TypeVar("T")

SERVICES = subjects.SERVICES
FACTORIES = {
    "intake": create_intake,
    "inventory": create_inventory,
    "fulfillment": create_fulfillment,
    "notify": create_notify,
}
CHANNEL_KEYS = {c: f"{c}-fault-key-0123456789abcdef" for c in (*demo.CHANNELS, "spreadsheet")}
ADMIN_TOKEN = "fault-admin-token-0123456789abcdef"


class RestartableNats(EmbeddedNats):
    """A nats-server on a fixed port whose file store outlives a restart (or a ``kill -9``)."""

    def __init__(self, store_dir: Path) -> None:
        super().__init__(store_dir, port=free_port(), monitor_port=free_port())

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


@dataclass
class InProcessSystem:
    """The four services in this event loop, each with its own database."""

    home: Path
    nats_url: str
    database_urls: dict[str, str]
    changes: dict[str, Any] = field(default_factory=dict)
    runtimes: dict[str, ServiceRuntime] = field(default_factory=dict)

    def settings(self, service: str) -> ServiceSettings:
        values: dict[str, Any] = {
            "simulator": service == "fulfillment",
            "simulator_min_delay_s": 0.05,
            "simulator_max_delay_s": 0.3,
            **self.changes,
        }
        # Where `orderflow up` keeps them: the channels' keys and an admin operator's token.
        credentials = self.home / "credentials.json"
        credentials.write_text(
            json.dumps(
                {
                    "channels": CHANNEL_KEYS,
                    "operators": {"fault-admin": {"role": "admin", "token": ADMIN_TOKEN}},
                }
            )
        )
        values["operators_file"] = credentials
        base = settings_for(self.nats_url, self.database_urls[service], self.home, **values)
        if service == "intake":
            return IntakeSettings(**{**base.model_dump(), "channel_keys_file": credentials})
        return base

    def build(self, service: str) -> ServiceRuntime:
        rt = FACTORIES[service](self.settings(service))
        self.runtimes[service] = rt
        return rt

    async def start(self, prepare: Callable[[str, ServiceRuntime], None] | None = None) -> None:
        """Build and start every service; ``prepare`` may wrap handlers before the start."""
        self.home.mkdir(parents=True, exist_ok=True)
        for service in SERVICES:
            rt = self.build(service)
            if prepare is not None:
                prepare(service, rt)
            await rt.start()
        nc = await nats.connect(self.nats_url)
        try:
            await seed_catalogue(nc, ADMIN_TOKEN)
        finally:
            await nc.close()

    async def stop(self) -> None:
        for rt in reversed(list(self.runtimes.values())):
            with contextlib.suppress(Exception):
                await rt.stop()


def sqlite_urls(home: Path) -> dict[str, str]:
    return {s: f"sqlite+aiosqlite:///{(home / f'{s}.db').resolve()}" for s in SERVICES}


@contextlib.asynccontextmanager
async def in_process_system(
    home: Path,
    nats_url: str,
    database_urls: dict[str, str] | None = None,
    prepare: Callable[[str, ServiceRuntime], None] | None = None,
    **changes: Any,
) -> AsyncIterator[InProcessSystem]:
    system = InProcessSystem(home, nats_url, database_urls or sqlite_urls(home), changes)
    try:
        await system.start(prepare)
        yield system
    finally:
        await system.stop()


async def connect(url: str) -> NATS:
    """A client that rides out a broker restart (as a channel's would)."""
    return await nats.connect(
        url, max_reconnect_attempts=-1, reconnect_time_wait=0.2, name="orderflow-fault-load"
    )


async def publish_until_stored(js: JetStreamContext, item: demo.Submitted, msg_id: str) -> int:
    """Publish one submission, retrying until the stream stores it; returns the tries taken.

    A fixed Nats-Msg-Id per submission makes a retry after a lost ack harmless (the stream's
    duplicate window drops it), which is what a careful channel does."""
    tries = 0
    deadline = time.monotonic() + 60
    while True:
        tries += 1
        try:
            await js.publish(
                subjects.submission(item.channel),
                orjson.dumps(item.payload),
                headers={"Nats-Msg-Id": msg_id},
                timeout=2,
            )
            return tries
        except Exception as exc:
            if time.monotonic() > deadline:
                raise AssertionError(f"{item.external_id} not stored after 60 s: {exc}") from exc
            if tries == 1 or tries % 20 == 0:
                log.info("load: %s not stored yet (%s); retrying", item.external_id, exc)
            await asyncio.sleep(0.1)


async def publish_load(js: JetStreamContext, items: list[demo.Submitted], rate: float) -> int:
    """Submit ``items`` at ``rate``/s over NATS; returns how many needed more than one try."""
    retried = 0
    started = time.monotonic()
    for i, item in enumerate(items):
        delay = started + i / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if await publish_until_stored(js, item, f"fault-load:{item.external_id}:{i}") > 1:
            retried += 1
    return retried


async def load_during(
    js: JetStreamContext, items: list[demo.Submitted], rate: float, faults: Awaitable[T]
) -> tuple[list[demo.Submitted], T]:
    """Submit ``items`` at ``rate``/s for as long as ``faults`` runs (and a second more), so
    every fault lands while orders are flowing however slow the machine. Returns what was
    submitted (a prefix of ``items``) and what ``faults`` returned; fails if ``items`` ran out
    before the faults ended."""
    stop = asyncio.Event()
    sent = 0

    async def publish() -> None:
        nonlocal sent
        started = time.monotonic()
        for i, item in enumerate(items):
            if stop.is_set():
                return
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await publish_until_stored(js, item, f"fault-load:{item.external_id}:{i}")
            sent = i + 1

    load = asyncio.create_task(publish())
    try:
        result = await faults
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await load
    assert sent < len(items), f"the load of {len(items)} ran out before the faults ended"
    return items[:sent], result


class TcpProxy(ControlledProxy):
    """The SRE tests' proxy with the outage vocabulary: ``cut()`` closes every connection and
    refuses new ones (the database looks down to the service), ``restore()`` lets them through
    again on the same port, and ``cuts`` counts the outages."""

    def __init__(self, target_host: str, target_port: int) -> None:
        super().__init__(target_host, target_port)
        self.port = free_port()
        self.cuts = 0

    async def cut(self) -> None:
        self.cuts += 1
        await self.stop()

    async def restore(self) -> None:
        await self.start()


def metric_total(rt: ServiceRuntime, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for family in rt.metrics.registry.collect():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


__all__ = [
    "CHANNEL_KEYS",
    "InProcessSystem",
    "RestartableNats",
    "TcpProxy",
    "connect",
    "free_port",
    "in_process_system",
    "load_during",
    "metric_total",
    "publish_load",
    "sqlite_urls",
]
