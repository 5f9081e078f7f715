"""Two replicas of every service, on PostgreSQL, sharing their durable consumers (deliver
groups), command queue groups, outbox relays and the simulator: the same load gives exactly the
results of one process each — no double reservation, shipment or notification, and no event
twice on a stream (outbox rows a replica republishes are dropped by ``Nats-Msg-Id`` within the
stream's duplicate window, and by the consumers' inbox past it)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from shared import nats_access
from shared.embedded_nats import EmbeddedNats
from shared.runtime import ServiceRuntime
from tests.cluster import system
from tests.conftest import _create_database, _drop_database

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

ORDERS = 40


@asynccontextmanager
async def databases(server: str) -> AsyncIterator[dict[str, str]]:
    """A fresh PostgreSQL database per service."""
    names = {s: f"orderflow_t_{s}_{uuid.uuid4().hex[:12]}" for s in system.FACTORIES}
    for name in names.values():
        await _create_database(server, name)
    try:
        yield {
            s: make_url(server)
            .set(drivername="postgresql+asyncpg", database=name)
            .render_as_string(hide_password=False)
            for s, name in names.items()
        }
    finally:
        for name in names.values():
            await _drop_database(server, name)


def processed(rt: ServiceRuntime) -> float:
    """Messages this replica's consumers applied."""
    return sum(
        sample.value
        for metric in rt.metrics.events_processed.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


async def run_load(server: str, tmp_path: Path, replicas: int) -> dict[str, Any]:
    pw = system.passwords()
    nats = EmbeddedNats(
        tmp_path / "nats",
        log_file=tmp_path / "nats.log",
        authorization=nats_access.render_authorization(nats_access.users(system.CHANNELS), pw),
    )
    url = nats.start()
    try:
        async with databases(server) as dbs:
            load = system.make_load(ORDERS, "load")
            async with system.running_system(
                url, dbs.__getitem__, tmp_path, replicas=replicas, pw=pw
            ) as runtimes:
                started = time.monotonic()
                await system.restock(url, 10 * ORDERS, pw)
                await system.submit(url, load, pw)
                await system.wait_until_all_delivered(dbs.__getitem__, ORDERS, timeout=120)
                worked = [(rt.name, processed(rt)) for rt in runtimes]
                print(
                    f"\n{replicas} replica(s) of every service: {ORDERS} orders delivered and "
                    f"notified in {time.monotonic() - started:.1f}s; messages per process {worked}"
                )
            result = await system.summary(dbs.__getitem__, "load")
            result["worked"] = worked
            result["events"] = await system.events_on_streams(url, pw)
            return result
    finally:
        nats.stop()


async def test_two_replicas_of_every_service_give_the_results_of_one(
    postgres_server: str, tmp_path: Path
) -> None:
    one = await run_load(postgres_server, tmp_path / "one", replicas=1)
    two = await run_load(postgres_server, tmp_path / "two", replicas=2)
    # The single-process run is the reference: check it is the expected one first.
    assert len(one["orders"]) == ORDERS
    for ext, seen in one["orders"].items():
        assert seen["status"] == ["delivered"], (ext, seen)
        assert seen["reservations"] == [(2, "shipped")], (ext, seen)
        assert seen["shipments"] == ["delivered"], (ext, seen)
        assert ("order_delivered", 1) in seen["notifications"], (ext, seen)
        assert all(n == 1 for _, n in seen["notifications"]), (ext, seen)
    assert len(one["rejected"]) == len([i for i in range(ORDERS) if i % 15 == 0])
    assert one["events"]["orderflow.intake.order_accepted"] == ORDERS
    # Every replica took its share of the messages (a deliver group, not a hot standby).
    assert len(two["worked"]) == 8
    assert all(n > 0 for _, n in two["worked"]), two["worked"]
    for section in ("orders", "rejected", "stock", "events"):
        assert two[section] == one[section], section
