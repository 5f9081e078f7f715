"""No oversell under concurrency: 1,000 single-unit orders for a SKU with 100 in stock give
exactly 100 reservations and 900 backorders, with two inventory processes
(``python -m orderflow run inventory``) sharing one durable consumer on one PostgreSQL
database, and with one process on SQLite."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import func, select

from services.inventory.models import backorders, metadata, reservations, stock
from shared import rpc, streams, subjects
from shared.contracts.common import Address, Customer, OrderLine
from shared.contracts.envelope import new_envelope
from shared.contracts.intake import OrderAccepted
from shared.db import Database
from shared.embedded_nats import free_port
from shared.ids import uuid7
from tests.conftest import eventually, run_outside_loop
from tests.integration.harness import nats_client

pytestmark = pytest.mark.slow

ORDERS = 1000
IN_STOCK = 100
SKU = "HOT-001"


def single_unit_order() -> OrderAccepted:
    order_id = uuid7()
    return OrderAccepted(
        order_id=order_id,
        channel="web",
        external_id=f"ext-{order_id}",
        customer=Customer(name="Ada", email="ada@example.com"),
        lines=[OrderLine(sku=SKU, quantity=1, unit_price=Decimal("9.90"))],
        currency="CNY",
        total=Decimal("9.90"),
        shipping_address=Address(
            name="Ada", line1="1 Tea Road", city="Hangzhou", postal_code="310000", country="CN"
        ),
        priority="normal",
        submitted_at=datetime.now(UTC),
    )


class InventoryProcess:
    def __init__(self, home: Path, nats_url: str, database_url: str, index: int) -> None:
        self.port = free_port()
        self.log_path = home / f"inventory-{index}.log"
        env = {
            **os.environ,
            "ORDERFLOW_HOME": str(home),
            "ORDERFLOW_NATS_URL": nats_url,
            "ORDERFLOW_DATABASE_URL": database_url,
            "ORDERFLOW_HTTP_PORT": str(self.port),
            "ORDERFLOW_BACKORDER_HOLD_S": "3600",
            "ORDERFLOW_LOG_LEVEL": "WARNING",
        }
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orderflow", "run", "inventory"],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture
def inventories(
    tmp_path: Path, nats_url: str, database_url: str
) -> Iterator[list[InventoryProcess]]:
    count = 2 if database_url.startswith("postgresql") else 1
    home = tmp_path / "home"
    home.mkdir()
    # The schema exists before the replicas start, as a deployment's migration step would
    # leave it (two processes creating the same tables at once race on PostgreSQL).
    run_outside_loop(create_schema(database_url))
    started = [InventoryProcess(home, nats_url, database_url, i) for i in range(count)]
    try:
        yield started
    finally:
        for p in started:
            p.stop()


async def create_schema(database_url: str) -> None:
    db = Database(database_url, metadata)
    try:
        await db.create_schema()
    finally:
        await db.close()


async def wait_ready(processes: list[InventoryProcess], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as http:
        for p in processes:
            while True:
                if p.proc.poll() is not None:
                    pytest.fail(f"inventory exited:\n{p.log_path.read_text()}")
                try:
                    async with http.get(f"{p.url}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"inventory not ready:\n{p.log_path.read_text()}")
                await asyncio.sleep(0.1)


async def orders_applied(processes: list[InventoryProcess]) -> list[int]:
    """How many order_accepted events each process applied (from its /metrics)."""
    pattern = re.compile(
        r'^orderflow_events_processed_total\{handler="order_accepted",service="inventory"\} (\S+)$',
        re.M,
    )
    counts = []
    async with aiohttp.ClientSession() as http:
        for p in processes:
            async with http.get(f"{p.url}/metrics") as resp:
                found = pattern.search(await resp.text())
            counts.append(int(float(found.group(1))) if found else 0)
    return counts


async def test_a_thousand_orders_for_a_hundred_units_reserve_exactly_a_hundred(
    inventories: list[InventoryProcess], nats_url: str, database_url: str
) -> None:
    db = Database(database_url, metadata)
    try:
        await wait_ready(inventories)
        async with nats_client(nats_url) as (nc, js):
            await rpc.call(
                nc,
                "inventory",
                "restock",
                {"sku": SKU, "quantity": IN_STOCK, "actor": "test"},
                timeout=10,
            )
            started = time.monotonic()
            envelopes = [new_envelope(single_unit_order()) for _ in range(ORDERS)]
            acks = [
                await js.publish_async(
                    env.subject, env.encode(), headers={"Nats-Msg-Id": env.event_id}
                )
                for env in envelopes
            ]
            await asyncio.gather(*acks)

            async def decided() -> bool:
                async with db.reading() as conn:
                    n = (
                        await conn.execute(
                            select(func.count(func.distinct(reservations.c.order_id)))
                        )
                    ).scalar_one() + (
                        await conn.execute(select(func.count()).select_from(backorders))
                    ).scalar_one()
                return n >= ORDERS

            await eventually(decided, timeout=60, what="every order reserved or backordered")
            took = time.monotonic() - started

            async def all_published() -> bool:
                info = await js.stream_info(streams.INVENTORY.name)
                return info.state.messages >= 1 + ORDERS  # the restock, then one per order

            await eventually(all_published, timeout=20, what="every outcome published")
            reserved_events = await js.stream_info(
                streams.INVENTORY.name,
                subjects_filter=subjects.events_of(subjects.INVENTORY, "stock_reserved"),
            )
            backordered_events = await js.stream_info(
                streams.INVENTORY.name,
                subjects_filter=subjects.events_of(subjects.INVENTORY, "stock_backordered"),
            )
        per_process = await orders_applied(inventories)

        async with db.reading() as conn:
            level = (await conn.execute(select(stock).where(stock.c.sku == SKU))).one()
            reserved_orders = (
                await conn.execute(
                    select(func.count())
                    .select_from(reservations)
                    .where(reservations.c.status == "reserved")
                )
            ).scalar_one()
            waiting = (
                await conn.execute(
                    select(func.count())
                    .select_from(backorders)
                    .where(backorders.c.status == "waiting")
                )
            ).scalar_one()

        print(
            f"\n{len(inventories)} inventory process(es) on {db.url.get_backend_name()}: "
            f"{ORDERS} orders for {IN_STOCK} units -> {reserved_orders} reserved, "
            f"{waiting} backordered in {took:.1f}s; orders applied per process {per_process}"
        )
        assert (level.on_hand, level.reserved) == (IN_STOCK, IN_STOCK)
        assert reserved_orders == IN_STOCK
        assert waiting == ORDERS - IN_STOCK
        assert len(reserved_events.state.subjects or {}) == IN_STOCK
        assert sum((reserved_events.state.subjects or {}).values()) == IN_STOCK
        assert len(backordered_events.state.subjects or {}) == ORDERS - IN_STOCK
        assert sum((backordered_events.state.subjects or {}).values()) == ORDERS - IN_STOCK
        # Every order was applied once, and with two replicas both took part.
        assert sum(per_process) == ORDERS
        assert all(n > 0 for n in per_process), per_process
    finally:
        await db.close()
