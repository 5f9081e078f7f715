"""The database unavailable for several seconds during a load, the services left alone.

PostgreSQL: inventory reaches its database through a TCP proxy the test controls; the proxy
drops every connection and refuses new ones for a while (the shared server is never touched).
SQLite: another process holds an exclusive lock on a service's database file for a while.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from orderflow import demo
from tests.faults import invariants
from tests.faults.system import (
    TcpProxy,
    connect,
    in_process_system,
    metric_total,
    publish_load,
    sqlite_urls,
)

pytestmark = [pytest.mark.slow]

OUTAGE_S = 4.0


async def test_postgres_refusing_connections_for_seconds_loses_and_repeats_nothing(
    nats_url: str, postgres_database: str, tmp_path: Path
) -> None:
    real = make_url(postgres_database)
    proxy = TcpProxy(real.host or "127.0.0.1", real.port or 5432)
    await proxy.start()
    urls = sqlite_urls(tmp_path / "var")
    urls["inventory"] = real.set(host="127.0.0.1", port=proxy.port).render_as_string(
        hide_password=False
    )
    try:
        # A short retry budget (0.2 s doubling, 3 tries: under a second) makes an outage of
        # seconds longer than it, as an outage of minutes is longer than the default one.
        async with in_process_system(
            tmp_path / "var", nats_url, urls, nak_delay_s=0.2, max_deliver=3
        ) as system:
            items = demo.plan(150, seed=11, channels=("web", "wechat", "marketplace"), run_id="pg")
            nc = await connect(nats_url)
            try:
                load = asyncio.create_task(publish_load(nc.jetstream(), items, rate=40))
                for _ in range(2):
                    await asyncio.sleep(1.0)
                    await proxy.cut()
                    await asyncio.sleep(OUTAGE_S)
                    await proxy.restore()
                await load
            finally:
                await nc.close()
            observed = invariants.Observed(nats_url, {**urls, "inventory": postgres_database})
            took = await invariants.settle(observed, items, timeout=120)
            report = await invariants.check(observed, items, seeded=invariants.SEEDED)
            rt = system.runtimes["inventory"]
            print(
                f"\nPostgreSQL cut off from inventory {proxy.cuts}x for {OUTAGE_S:.0f}s during "
                f"{len(items)} submissions; settled {took:.1f}s after the load; handler failures "
                f"{metric_total(rt, 'orderflow_handler_failures_total'):.0f}; {report.figures}"
            )
            report.assert_clean()
    finally:
        await proxy.stop()


LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


async def test_sqlite_locked_by_another_process_for_seconds_loses_and_repeats_nothing(
    nats_url: str, tmp_path: Path
) -> None:
    home = tmp_path / "var"
    async with in_process_system(home, nats_url, nak_delay_s=0.2, max_deliver=3):
        items = demo.plan(150, seed=12, channels=("web", "wechat", "marketplace"), run_id="lk")
        nc = await connect(nats_url)
        locks: list[tuple[str, float]] = []
        try:
            load = asyncio.create_task(publish_load(nc.jetstream(), items, rate=40))
            for service in ("inventory", "intake"):
                await asyncio.sleep(1.0)
                started = time.monotonic()
                locker = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-c",
                    LOCKER,
                    str(home / f"{service}.db"),
                    str(OUTAGE_S),
                    stdout=asyncio.subprocess.PIPE,
                )
                assert locker.stdout is not None
                assert (await locker.stdout.readline()).strip() == b"locked"
                await asyncio.wait_for(locker.wait(), 30)
                locks.append((service, time.monotonic() - started))
            await load
        finally:
            await nc.close()
        observed = invariants.Observed(nats_url, sqlite_urls(home))
        took = await invariants.settle(observed, items, timeout=120)
        report = await invariants.check(observed, items, seeded=invariants.SEEDED)
        print(
            f"\nSQLite locked exclusively by another process: {locks} during {len(items)} "
            f"submissions; settled {took:.1f}s after the load; {report.figures}"
        )
        report.assert_clean()
