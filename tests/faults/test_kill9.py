"""``kill -9`` of the services at random moments during a load, as real processes.

Builds on tests/e2e: the same ``orderflow up`` system (its supervisor restarts what dies, as it
would in production), but many kills, at random moments and of random services (each of the four
at least once), while orders from three channels stream in. The test restarts nothing itself.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time

import nats
import pytest

from orderflow import demo
from tests.e2e.conftest import RunningSystem, system
from tests.e2e.test_lifecycle import wait_for_catalogue
from tests.faults import invariants
from tests.faults.system import load_during

pytestmark = [pytest.mark.slow, pytest.mark.e2e]
__all__ = ["system"]  # the module-scoped `orderflow up` fixture of tests/e2e

KILLS = 8


def observed(system: RunningSystem) -> invariants.Observed:
    return invariants.Observed(
        system.nats_url,
        {s: f"sqlite+aiosqlite:///{system.home / f'{s}.db'}" for s in demo_services()},
        system.nats_options,
    )


def demo_services() -> tuple[str, ...]:
    return ("intake", "inventory", "fulfillment", "notify")


async def test_kill_9_at_random_moments_loses_and_repeats_nothing(system: RunningSystem) -> None:
    rng = random.Random(int(os.environ.get("ORDERFLOW_FAULT_SEED", "0")) or None)
    victims = list(demo_services())
    rng.shuffle(victims)
    victims += [rng.choice(demo_services()) for _ in range(KILLS - len(victims))]
    killed: list[tuple[str, float]] = []
    plan = demo.plan(2000, seed=21, channels=("web", "wechat", "marketplace"), run_id="k9")

    async def kill_at_random_moments() -> None:
        started = time.monotonic()
        for service in victims:
            await asyncio.sleep(rng.uniform(0.2, 1.5))
            old = system.pid(service)
            os.kill(old, signal.SIGKILL)
            killed.append((service, round(time.monotonic() - started, 1)))
            # The supervisor notices within a second; the next kill waits for the new process.
            deadline = time.monotonic() + 60
            while system.pid(service) == old and time.monotonic() < deadline:
                await asyncio.sleep(0.1)

    nc = await nats.connect(system.nats_url, **system.nats_options)
    try:
        await wait_for_catalogue(nc)
        items, _ = await load_during(nc.jetstream(), plan, 10, kill_at_random_moments())
    finally:
        await nc.close()
    took = await invariants.settle(observed(system), items, timeout=150)
    report = await invariants.check(observed(system), items, seeded=invariants.SEEDED)
    restarts = system.launcher_output().count("exited with code -9; restarting")
    print(
        f"\nkill -9 x{len(killed)} at (service, s into the load) {killed} during "
        f"{len(items)} submissions; supervisor restarts "
        f"{restarts}; settled {took:.1f}s after the load; {report.figures}"
    )
    assert restarts >= len(killed)
    assert {s for s, _ in killed} == set(demo_services())
    report.assert_clean()
