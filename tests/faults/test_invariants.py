"""The checker itself: clean after a quiet load, and it names each kind of damage done behind
the services' backs (a checker that cannot fail would prove nothing)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from orderflow import demo
from tests.faults import invariants
from tests.faults.system import connect, in_process_system, publish_load

pytestmark = [pytest.mark.slow]


async def execute(url: str, sql: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(text(sql))
    finally:
        await engine.dispose()


async def test_the_checker_passes_a_quiet_run_and_names_each_violation(
    nats_url: str, tmp_path: Path
) -> None:
    items = demo.plan(40, seed=51, channels=("web", "wechat"), run_id="iv")
    async with in_process_system(tmp_path / "var", nats_url) as system:
        nc = await connect(nats_url)
        try:
            await publish_load(nc.jetstream(), items, rate=40)
        finally:
            await nc.close()
        observed = invariants.Observed(nats_url, system.database_urls)
        await invariants.settle(observed, items, timeout=60)
        clean = await invariants.check(observed, items, seeded=invariants.SEEDED)
        assert clean.violations == []
    urls = system.database_urls
    delivered = [
        r["order_id"]
        for r in await invariants.query(
            urls["intake"], "SELECT order_id FROM orders WHERE status = 'delivered'"
        )
    ]
    a, b, c = delivered[:3]
    # A notification sent twice, a reservation applied twice, units shipped from nowhere.
    await execute(
        urls["notify"],
        "INSERT INTO notifications SELECT 'x' || notification_id, 'x' || source_event_id, "
        "order_id, template, audience, locale, recipient, subject, body, created_at "
        f"FROM notifications WHERE order_id = '{c}' AND template = 'order_confirmed'",
    )
    await execute(
        urls["inventory"], f"UPDATE reservations SET quantity = quantity * 2 WHERE order_id = '{b}'"
    )
    await execute(urls["inventory"], "UPDATE stock SET shipped = shipped + 1 WHERE sku = 'BAG-030'")
    # A lost order: its row gone.
    await execute(urls["intake"], f"DELETE FROM orders WHERE order_id = '{a}'")
    # Work left behind: an outbox row never published.
    await execute(
        urls["fulfillment"],
        "INSERT INTO outbox (event_id, subject, payload, created_at) "
        "VALUES ('left-behind', 'orderflow.x.y.z', x'00', 0)",
    )
    report = await invariants.check(observed, items, seeded=invariants.SEEDED)
    found = "\n".join(report.violations)
    for expected in (
        "0 order rows, expected 1",
        f"order {c}: 2x order_confirmed",
        f"order {b}: reserved",
        "BAG-030: ",
        "unpublished outbox rows",
    ):
        assert expected in found, (expected, found)
