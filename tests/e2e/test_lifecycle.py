"""All four services as real processes: orders from several channels through the whole lifecycle,
then the same under `kill -9` of every service in turn. Nothing lost, nothing done twice."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import time
from typing import Any

import nats
import orjson
import pytest

from orderflow import demo
from shared import rpc

from .conftest import RunningSystem

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

SEEDED = {sku: units * len(demo.WAREHOUSES) for sku, units, _ in demo.CATALOGUE}


async def wait_for_catalogue(nc: nats.NATS) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = await rpc.call(nc, "inventory", "stock", {})
        if len(rows) >= len(demo.CATALOGUE) * len(demo.WAREHOUSES):
            return
        await asyncio.sleep(0.2)
    raise AssertionError("the launcher never seeded the catalogue")


async def answers_for(
    nc: nats.NATS, items: list[demo.Submitted], timeout: float
) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """Every intake answer (outcome, order id) per (channel, external_id) of this load."""
    ours = {(i.channel, i.external_id) for i in items}
    answers: dict[tuple[str, str], list[tuple[str, str]]] = collections.defaultdict(list)
    js = nc.jetstream()
    sub = await js.subscribe("orderflow.intake.*.*", ordered_consumer=True)
    deadline = time.monotonic() + timeout
    got = 0
    try:
        while got < len(items) and time.monotonic() < deadline:
            try:
                msg = await sub.next_msg(timeout=1)
            except nats.errors.TimeoutError:
                continue
            env = orjson.loads(msg.data)
            data = env["data"]
            key = (data["channel"], data.get("external_id"))
            if key in ours:
                outcome = env["type"].removeprefix("order_")
                answers[key].append((outcome, data["order_id"]))
                got += 1
    finally:
        await sub.unsubscribe()
    return answers


def expected_outcome(item: demo.Submitted) -> str:
    return {
        "accepted": "accepted",
        "backordered": "accepted",
        "rejected": "rejected",
        "duplicate": "duplicate",
    }[item.expect]


def check_one_answer_each(
    items: list[demo.Submitted], answers: dict[tuple[str, str], list[tuple[str, str]]]
) -> dict[str, str]:
    """Returns order id -> expected final status, after checking every answer."""
    want: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for item in items:
        want[(item.channel, item.external_id)].append(expected_outcome(item))
    final: dict[str, str] = {}
    for key, outcomes in want.items():
        got = answers.get(key, [])
        assert sorted(o for o, _ in got) == sorted(outcomes), f"{key}: {got} != {outcomes}"
        ids = {oid for o, oid in got if o in ("accepted", "duplicate")}
        assert len(ids) <= 1, f"{key} answered with different order ids {ids}"
    for item in items:
        got = answers[(item.channel, item.external_id)]
        if item.expect == "accepted":
            final[next(oid for o, oid in got if o == "accepted")] = "delivered"
        elif item.expect == "backordered":
            final[next(oid for o, oid in got if o == "accepted")] = "backordered"
        elif item.expect == "rejected":
            final[next(oid for o, oid in got if o == "rejected")] = "rejected"
    return final


async def wait_final(system: RunningSystem, final: dict[str, str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    pending = {oid: st for oid, st in final.items() if st != "rejected"}
    while pending and time.monotonic() < deadline:
        with system.db("intake") as db:
            marks = ",".join("?" * len(pending))
            rows = db.execute(
                f"SELECT order_id, status FROM orders WHERE order_id IN ({marks})", list(pending)
            ).fetchall()
        for row in rows:
            if row["status"] == pending[row["order_id"]]:
                del pending[row["order_id"]]
        if pending:
            await asyncio.sleep(0.5)
    assert not pending, f"{len(pending)} orders not final, e.g. {list(pending.items())[:5]}"
    with system.db("intake") as db:
        rejected = [oid for oid, st in final.items() if st == "rejected"]
        marks = ",".join("?" * len(rejected))
        found = db.execute(
            f"SELECT count(*) FROM rejections WHERE order_id IN ({marks})", rejected
        ).fetchone()[0]
        assert found == len(rejected)


def check_invariants(system: RunningSystem, delivered: set[str]) -> None:
    # Stock conserved: what was seeded is on hand or shipped; reserved matches reservations.
    with system.db("inventory") as db:
        for row in db.execute(
            "SELECT sku, sum(on_hand) AS on_hand, sum(reserved) AS reserved, "
            "sum(shipped) AS shipped FROM stock GROUP BY sku"
        ):
            assert row["on_hand"] + row["shipped"] == SEEDED[row["sku"]], dict(row)
            assert 0 <= row["reserved"] <= row["on_hand"], dict(row)
        held = dict(
            db.execute(
                "SELECT sku, sum(quantity) FROM reservations WHERE status = 'reserved' GROUP BY sku"
            ).fetchall()
        )
        for row in db.execute("SELECT sku, sum(reserved) FROM stock GROUP BY sku"):
            assert row[1] == held.get(row[0], 0)
        shipped_units = dict(
            db.execute("SELECT sku, sum(shipped) FROM stock GROUP BY sku").fetchall()
        )
    # No reservation or shipment applied twice: units shipped equal the delivered orders' lines.
    want: collections.Counter[str] = collections.Counter()
    with system.db("intake") as db:
        for row in db.execute("SELECT order_id, order_doc FROM orders WHERE status = 'delivered'"):
            for line in orjson.loads(row["order_doc"])["lines"]:
                want[line["sku"]] += line["quantity"]
    assert {k: v for k, v in shipped_units.items() if v} == dict(want)
    with system.db("fulfillment") as db:
        per_order = db.execute(
            "SELECT order_id, count(*) AS n FROM shipments GROUP BY order_id HAVING count(*) > 1"
        ).fetchall()
        assert per_order == []
    # Exactly one notification per customer-facing event. Notify may still be catching up (a
    # killed notify's unacked messages come back after ack_wait): wait for them, then count.
    templates = ("order_confirmed", "order_shipped", "order_delivered")
    deadline = time.monotonic() + 90
    while True:
        with system.db("notify") as db:
            counts = collections.Counter(
                (r["order_id"], r["template"])
                for r in db.execute("SELECT order_id, template FROM notifications")
            )
        missing = [(o, t) for o in delivered for t in templates if counts[(o, t)] == 0]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for oid in delivered:
        for template in templates:
            assert counts[(oid, template)] == 1, (oid, template, counts[(oid, template)])
    customer_templates = {"order_confirmed", "order_shipped", "order_delivered", "order_delayed"}
    assert max(n for (_, t), n in counts.items() if t in customer_templates) == 1


async def run_load(
    system: RunningSystem, n: int, rate: float, seed: int, during: Any = None
) -> dict[str, str]:
    nc = await nats.connect(system.nats_url, **system.nats_options)
    try:
        await wait_for_catalogue(nc)
        items = demo.plan(
            n, seed=seed, channels=("web", "wechat", "marketplace"), run_id=f"e2e{seed}"
        )
        listening = asyncio.create_task(answers_for(nc, items, timeout=120))
        started = time.monotonic()
        publishing = asyncio.create_task(demo.publish(nc.jetstream(), items, rate))
        if during is not None:
            await during()
        await publishing
        answers = await listening
        final = check_one_answer_each(items, answers)
        await wait_final(system, final, timeout=150)
        elapsed = time.monotonic() - started
        outcomes = collections.Counter(final.values())
        print(
            f"\n{n} submissions, {len(final)} orders, final states {dict(outcomes)}, "
            f"{elapsed:.1f}s from first submission to last final state"
        )
        return final
    finally:
        await nc.close()


async def test_orders_from_three_channels_reach_their_final_state(system: RunningSystem) -> None:
    final = await run_load(system, n=200, rate=100, seed=1)
    delivered = {oid for oid, st in final.items() if st == "delivered"}
    assert len(delivered) > 150
    check_invariants(system, delivered)


async def test_kill_9_of_every_service_during_a_load_loses_and_repeats_nothing(
    system: RunningSystem,
) -> None:
    killed: list[str] = []

    async def kill_each() -> None:
        for service in ("intake", "inventory", "fulfillment", "notify"):
            await asyncio.sleep(1.0)
            os.kill(system.pid(service), signal.SIGKILL)
            killed.append(service)
            # Give the launcher time to notice and restart it before the next kill.
            deadline = time.monotonic() + 30
            old = system.pid(service)
            while system.pid(service) == old and time.monotonic() < deadline:
                await asyncio.sleep(0.2)

    final = await run_load(system, n=300, rate=60, seed=2, during=kill_each)
    assert killed == ["intake", "inventory", "fulfillment", "notify"]
    output = system.launcher_output()
    for service in killed:
        assert f"{service} exited with code -9; restarting" in output
    with system.db("intake") as db:
        delivered = {
            r[0] for r in db.execute("SELECT order_id FROM orders WHERE status='delivered'")
        }
    assert {oid for oid, st in final.items() if st == "delivered"} <= delivered
    check_invariants(system, delivered)
