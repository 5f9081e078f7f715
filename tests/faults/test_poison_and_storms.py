"""Handlers that fail, and handlers too slow for their ack wait, inside the running system.

The fault is injected by wrapping a real service's handler before it starts (the rest of the
service is untouched): for chosen orders it raises every time (a poison message), or raises a
few times and then succeeds; or every call sleeps past the consumer's ack wait, so JetStream
redelivers what is still being applied (a redelivery storm).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from nats.aio.msg import Msg

from orderflow import demo
from shared.consumer import UnitOfWork
from shared.contracts.envelope import Envelope
from shared.runtime import ServiceRuntime
from tests.faults import invariants
from tests.faults.system import connect, in_process_system, metric_total, publish_load

pytestmark = [pytest.mark.slow]

Handler = Callable[[UnitOfWork, list[Any]], Awaitable[None]]


class PoisonPill(RuntimeError):
    pass


def wrap(
    rt: ServiceRuntime, consumer: str, kind: str, around: Callable[[Handler], Handler]
) -> None:
    [spec] = [s for s in rt.consumer_specs if s.name == consumer]
    spec.handlers[kind] = around(spec.handlers[kind])


async def test_poison_and_flaky_messages_during_a_load(nats_url: str, tmp_path: Path) -> None:
    items = demo.plan(150, seed=41, channels=("web", "wechat", "marketplace"), run_id="px")
    plain = [i for i in items if i.expect == "accepted"]
    poison = {plain[10].external_id, plain[60].external_id}
    flaky = {plain[20].external_id: 2, plain[80].external_id: 1}
    calls: collections.Counter[str] = collections.Counter()

    def failing(handler: Handler) -> Handler:
        async def handle(uow: UnitOfWork, events: list[Envelope]) -> None:
            for env in events:
                ext = getattr(env.data, "external_id", "")
                calls[ext] += 1
                if ext in poison:
                    raise PoisonPill(f"order {ext} cannot be reserved, ever")
                if calls[ext] <= flaky.get(ext, 0):
                    raise PoisonPill(f"order {ext} cannot be reserved yet (call {calls[ext]})")
            await handler(uow, events)

        return handle

    def prepare(service: str, rt: ServiceRuntime) -> None:
        if service == "inventory":
            wrap(rt, "inventory-orders", "order_accepted", failing)

    async with in_process_system(tmp_path / "var", nats_url, prepare=prepare) as system:
        nc = await connect(nats_url)
        try:
            await publish_load(nc.jetstream(), items, rate=50)
        finally:
            await nc.close()
        parked = [(i.channel, i.external_id) for i in items if i.external_id in poison]
        observed = invariants.Observed(nats_url, system.database_urls)
        await invariants.settle(observed, items, parked=parked, timeout=120)

        def letter_for(ext: str) -> Callable[[Msg], bool]:
            def matches(msg: Msg) -> bool:
                headers = msg.headers or {}
                if headers.get("Orderflow-Consumer") != "inventory-orders":
                    return False
                return bool(
                    orjson.loads(msg.data or b"{}").get("data", {}).get("external_id") == ext
                )

            return matches

        expected = [
            invariants.ExpectedDeadLetter(f"poison {ext}", letter_for(ext), "PoisonPill")
            for ext in sorted(poison)
        ]
        report = await invariants.check(
            observed, items, dead_letters=expected, seeded=invariants.SEEDED
        )
        rt = system.runtimes["inventory"]
        settings = rt.settings
        failures = metric_total(rt, "orderflow_handler_failures_total", consumer="inventory-orders")
        dead = metric_total(rt, "orderflow_dead_letters_total", consumer="inventory-orders")
        orders = await invariants.intake_orders(observed)
        reserved = {
            r["order_id"]
            for r in await invariants.query(
                system.database_urls["inventory"], "SELECT DISTINCT order_id FROM reservations"
            )
        }
        print(
            f"\n{len(poison)} poison and {len(flaky)} flaky orders in {len(items)} submissions: "
            f"handler failures {failures:.0f}, dead letters {dead:.0f}; {report.figures}"
        )
    report.assert_clean()
    assert dead == len(poison)
    # Each poison message failed alone max_deliver times (a failure inside a batch is retried
    # one by one before it counts); each flaky one failed its N times, then was applied.
    assert failures >= len(poison) * settings.max_deliver
    for ext in poison:
        [row] = orders[(_channel(items, ext), ext)]
        assert row["status"] == "accepted" and row["order_id"] not in reserved
    for ext, n in flaky.items():
        [row] = orders[(_channel(items, ext), ext)]
        assert row["status"] == "delivered", (ext, row["status"])
        assert calls[ext] >= n + 1


def _channel(items: list[demo.Submitted], ext: str) -> str:
    return next(i.channel for i in items if i.external_id == ext)


async def test_a_redelivery_storm_applies_everything_once(nats_url: str, tmp_path: Path) -> None:
    items = demo.plan(120, seed=42, channels=("web", "wechat", "marketplace"), run_id="rs")
    slow_calls = collections.Counter[str]()

    def slow(handler: Handler) -> Handler:
        async def handle(uow: UnitOfWork, events: list[Any]) -> None:
            slow_calls[events[0].type] += 1
            await asyncio.sleep(1.5)  # past the 1 s ack wait: the batch is redelivered meanwhile
            await handler(uow, events)

        return handle

    def prepare(service: str, rt: ServiceRuntime) -> None:
        if service == "fulfillment":
            wrap(rt, "fulfillment-reservations", "stock_reserved", slow)
        if service == "notify":
            wrap(rt, "notify-fulfillment", "shipment_shipped", slow)

    async with in_process_system(
        tmp_path / "var", nats_url, prepare=prepare, ack_wait_s=1, max_deliver=5
    ) as system:
        nc = await connect(nats_url)
        try:
            await publish_load(nc.jetstream(), items, rate=40)
        finally:
            await nc.close()
        observed = invariants.Observed(nats_url, system.database_urls)
        took = await invariants.settle(observed, items, timeout=150)
        report = await invariants.check(observed, items, seeded=invariants.SEEDED)
        redelivered = sum(
            metric_total(rt, "orderflow_redeliveries_total") for rt in system.runtimes.values()
        )
        skipped = sum(
            metric_total(rt, "orderflow_inbox_duplicates_total") for rt in system.runtimes.values()
        )
        print(
            f"\nredelivery storm (ack wait 1 s, {sum(slow_calls.values())} handler calls of "
            f"1.5 s): {redelivered:.0f} redeliveries, {skipped:.0f} skipped by the inbox; settled "
            f"{took:.1f}s after the load; {report.figures}"
        )
    report.assert_clean()
    assert redelivered > 0 and skipped > 0
