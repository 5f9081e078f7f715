"""The database unavailable for several seconds during a load, the services left alone.

PostgreSQL: inventory reaches its database through a TCP proxy the test controls; the proxy
drops every connection and refuses new ones for a while (the shared server is never touched).
SQLite: another process holds an exclusive lock on a service's database file for a while.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy.engine import make_url

from orderflow import demo
from tests.faults import invariants
from tests.faults.system import (
    CHANNEL_KEYS,
    TcpProxy,
    connect,
    in_process_system,
    load_during,
    metric_total,
    sqlite_urls,
)

pytestmark = [pytest.mark.slow]

OUTAGE_S = 4.0


@pytest.mark.postgres
async def test_postgres_refusing_connections_for_seconds_loses_and_repeats_nothing(
    nats_url: str, postgres_databases: Callable[[], str], tmp_path: Path
) -> None:
    real = {s: postgres_databases() for s in ("intake", "inventory")}
    server = make_url(real["inventory"])
    proxy = TcpProxy(server.host or "127.0.0.1", server.port or 5432)
    await proxy.start()
    urls = sqlite_urls(tmp_path / "var")
    for service, url in real.items():
        urls[service] = (
            make_url(url)
            .set(host="127.0.0.1", port=proxy.port)
            .render_as_string(hide_password=False)
        )
    answers_in_outage: collections.Counter[int] = collections.Counter()
    try:
        # A short retry budget (0.2 s doubling, 3 tries: under a second) makes an outage of
        # seconds longer than it, as an outage of minutes is longer than the default one.
        async with in_process_system(
            tmp_path / "var", nats_url, urls, nak_delay_s=0.2, max_deliver=3
        ) as system:
            plan = demo.plan(2000, seed=11, channels=("web", "wechat", "marketplace"), run_id="pg")
            # Some orders come by HTTP during the cuts, posted again after a 5xx until taken.
            by_http = demo.plan(6, seed=13, channels=("web",), run_id="pg-http")
            http_url = f"http://127.0.0.1:{system.runtimes['intake'].http_port}/orders"

            async def cut_twice() -> None:
                async with aiohttp.ClientSession() as http:
                    for round_ in range(2):
                        await asyncio.sleep(1.0)
                        await proxy.cut()
                        posts = [
                            asyncio.create_task(post_until_taken(http, http_url, item))
                            for item in by_http[round_ * 3 : round_ * 3 + 3]
                        ]
                        await asyncio.sleep(OUTAGE_S)
                        await proxy.restore()
                        for statuses in await asyncio.gather(*posts):
                            answers_in_outage.update(statuses)

            nc = await connect(nats_url)
            try:
                by_nats, _ = await load_during(nc.jetstream(), plan, 40, cut_twice())
            finally:
                await nc.close()
            items = by_nats + by_http
            observed = invariants.Observed(nats_url, {**urls, **real})
            took = await invariants.settle(observed, items, timeout=120)
            report = await invariants.check(observed, items, seeded=invariants.SEEDED)
            failures = sum(
                metric_total(rt, "orderflow_handler_failures_total")
                for rt in system.runtimes.values()
            )
            print(
                f"\nPostgreSQL cut off from intake and inventory {proxy.cuts}x for "
                f"{OUTAGE_S:.0f}s during {len(items)} submissions; HTTP answers meanwhile "
                f"{dict(answers_in_outage)}; settled {took:.1f}s after the load; handler "
                f"failures {failures:.0f}; {report.figures}"
            )
            report.assert_clean()
            assert 500 not in answers_in_outage
            assert answers_in_outage[503] > 0
            assert sum(n for status, n in answers_in_outage.items() if status < 500) == len(by_http)
    finally:
        await proxy.stop()


async def post_until_taken(
    http: aiohttp.ClientSession, url: str, item: demo.Submitted
) -> list[int]:
    """POST an order as a channel does: again after a 5xx, until it is answered."""
    headers = {"Authorization": f"Bearer {CHANNEL_KEYS[item.channel]}"}
    statuses = []
    while True:
        async with http.post(url, json=item.payload, headers=headers) as r:
            statuses.append(r.status)
            if r.status < 500:
                return statuses
        await asyncio.sleep(0.5)


LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


# Longer than the services' SQLite busy timeout (5 s), so writers give up waiting on it.
LOCK_S = 7.0


async def test_sqlite_locked_by_another_process_for_seconds_loses_and_repeats_nothing(
    nats_url: str, tmp_path: Path
) -> None:
    home = tmp_path / "var"
    answers_in_lock: collections.Counter[int] = collections.Counter()
    async with in_process_system(home, nats_url, nak_delay_s=0.2, max_deliver=3) as system:
        plan = demo.plan(2000, seed=12, channels=("web", "wechat", "marketplace"), run_id="lk")
        by_http = demo.plan(6, seed=14, channels=("web",), run_id="lk-http")
        http_url = f"http://127.0.0.1:{system.runtimes['intake'].http_port}/orders"
        locks: list[tuple[str, float]] = []

        async def lock_twice() -> None:
            async with aiohttp.ClientSession() as http:
                for round_, service in enumerate(("inventory", "intake")):
                    await asyncio.sleep(1.0)
                    started = time.monotonic()
                    locker = await asyncio.create_subprocess_exec(
                        sys.executable,
                        "-c",
                        LOCKER,
                        str(home / f"{service}.db"),
                        str(LOCK_S),
                        stdout=asyncio.subprocess.PIPE,
                    )
                    assert locker.stdout is not None
                    assert (await locker.stdout.readline()).strip() == b"locked"
                    posts = [
                        asyncio.create_task(post_until_taken(http, http_url, item))
                        for item in by_http[round_ * 3 : round_ * 3 + 3]
                    ]
                    await asyncio.wait_for(locker.wait(), 30)
                    locks.append((service, round(time.monotonic() - started, 1)))
                    for statuses in await asyncio.gather(*posts):
                        answers_in_lock.update(statuses)

        nc = await connect(nats_url)
        try:
            by_nats, _ = await load_during(nc.jetstream(), plan, 40, lock_twice())
        finally:
            await nc.close()
        items = by_nats + by_http
        observed = invariants.Observed(nats_url, sqlite_urls(home))
        took = await invariants.settle(observed, items, timeout=120)
        report = await invariants.check(observed, items, seeded=invariants.SEEDED)
        print(
            f"\nSQLite locked exclusively by another process: {locks} during {len(items)} "
            f"submissions; HTTP answers meanwhile {dict(answers_in_lock)}; settled {took:.1f}s "
            f"after the load; {report.figures}"
        )
        report.assert_clean()
        assert 500 not in answers_in_lock
        assert sum(n for status, n in answers_in_lock.items() if status < 500) == len(by_http)
