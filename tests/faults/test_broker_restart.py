"""nats-server (file storage) restarted during a load: once stopped cleanly, once killed -9.

The services are never touched: they reconnect by themselves, their unacked inputs come back,
their outbox relay republishes what the broker never confirmed, and the channel retries what it
could not store. Nothing lost, nothing done twice.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from orderflow import demo
from tests.faults import invariants
from tests.faults.system import RestartableNats, connect, in_process_system, load_during

pytestmark = [pytest.mark.slow]


async def test_nats_restarts_during_a_load_lose_and_repeat_nothing(tmp_path: Path) -> None:
    server = RestartableNats(tmp_path / "nats-store")
    url = server.start()
    restarts: list[str] = []
    try:
        async with in_process_system(tmp_path / "var", url) as system:
            plan = demo.plan(2000, seed=9, channels=("web", "wechat", "marketplace"), run_id="nr")

            async def restart_twice() -> None:
                for how in ("SIGTERM", "SIGKILL"):
                    await asyncio.sleep(1.5)
                    server.kill() if how == "SIGKILL" else server.stop()
                    restarts.append(how)
                    await asyncio.sleep(2.0)  # down for two seconds, the load still running
                    server.start()

            nc = await connect(url)
            try:
                items, _ = await load_during(nc.jetstream(), plan, 40, restart_twice())
            finally:
                await nc.close()
            observed = invariants.Observed(url, system.database_urls)
            took = await invariants.settle(observed, items, timeout=120)
            report = await invariants.check(observed, items, seeded=invariants.SEEDED)
            print(
                f"\nnats-server restarted {len(restarts)}x ({restarts}) during "
                f"{len(items)} submissions; settled "
                f"{took:.1f}s after the load; {report.figures}"
            )
            report.assert_clean()
    finally:
        server.stop()
