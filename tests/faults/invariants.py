"""The invariants every fault test checks once the system has settled.

The checker is an observer: it reads the services' databases and the streams directly (a test
may; services never read each other's tables), and reports every violation it finds rather than
stopping at the first, so a failing fault test says all that went wrong.

1. every submission got exactly one answer (accepted, rejected or duplicate), the one expected;
2. no order lost or duplicated: one order row and one ``order_accepted`` per accepted external id;
3. every accepted order reached the final state it should (delivered, or waiting as a backorder);
4. no reservation, shipment or notification applied twice (quantities and counts per order);
5. stock conserved per SKU (the ledger explains every unit; reserved and shipped match);
6. every message that could not be processed is in the dead-letter stream with its reason, each
   raised an operations alert, and nothing else was dead-lettered;
7. quiet at the end: every durable consumer has nothing pending or unacked, every outbox is empty.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import nats
import orjson
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from orderflow import demo
from shared import streams
from shared.contracts.envelope import decode_envelope

SEEDED = {sku: units * len(demo.WAREHOUSES) for sku, units, _ in demo.CATALOGUE}
FINAL = {"accepted": "delivered", "backordered": "backordered"}
ANSWER = {"accepted": "accepted", "backordered": "accepted", "rejected": "rejected"}
CUSTOMER_ONCE = ("order_confirmed",)
PER_SHIPMENT = {"order_shipped": "shipped_at", "order_delivered": "delivered_at"}


@dataclass(frozen=True)
class ExpectedDeadLetter:
    """A message the test made unprocessable on purpose: where it went and why it must say."""

    what: str
    matches: Callable[[Msg], bool]
    reason_contains: str = ""


@dataclass
class Observed:
    """Where to look: the broker and each service's database (SQLAlchemy async URLs)."""

    nats_url: str
    database_urls: dict[str, str]
    # How to connect, when the server wants a user (``orderflow up`` gives an admin one).
    nats_options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    violations: list[str] = field(default_factory=list)
    figures: dict[str, int] = field(default_factory=dict)

    def fail(self, text: str) -> None:
        self.violations.append(text)

    def assert_clean(self) -> None:
        assert not self.violations, "invariants violated:\n  " + "\n  ".join(self.violations[:40])


async def query(url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            result = await conn.execute(text(sql), params)
            return [dict(r._mapping) for r in result]
    finally:
        await engine.dispose()


async def read_stream(js: JetStreamContext, stream: str) -> list[Msg]:
    """Every message a stream holds, in order (an ordered consumer: fast, leaves nothing)."""
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        return []
    if not info.state.messages:
        return []
    sub = await js.subscribe(
        info.config.subjects[0] if info.config.subjects else ">",
        stream=stream,
        ordered_consumer=True,
    )
    out: list[Msg] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=10)
            out.append(msg)
            if msg.metadata.num_pending == 0:
                return out
    finally:
        await sub.unsubscribe()


async def consumers_quiet(js: JetStreamContext) -> list[str]:
    """Durable consumers with messages still pending or unacknowledged (empty when quiet)."""
    busy = []
    for stream in (
        streams.SUBMISSIONS,
        streams.INTAKE,
        streams.INVENTORY,
        streams.FULFILLMENT,
        streams.DEAD_LETTERS,
    ):
        try:
            infos = await js.consumers_info(stream.name)
        except NotFoundError:
            continue
        for info in infos:
            if not info.config.durable_name:
                continue
            if info.num_pending or info.num_ack_pending or info.num_redelivered:
                busy.append(
                    f"{info.name}: pending {info.num_pending}, unacked {info.num_ack_pending}, "
                    f"redelivering {info.num_redelivered}"
                )
    return busy


async def outboxes_empty(observed: Observed) -> list[str]:
    left = []
    for service, url in observed.database_urls.items():
        [row] = await query(url, "SELECT count(*) AS n FROM outbox WHERE published_at IS NULL")
        if row["n"]:
            left.append(f"{service}: {row['n']} unpublished outbox rows")
    return left


async def intake_orders(observed: Observed) -> dict[tuple[str, str], list[dict[str, Any]]]:
    rows = await query(
        observed.database_urls["intake"],
        "SELECT order_id, channel, external_id, status, order_doc FROM orders",
    )
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = collections.defaultdict(list)
    for row in rows:
        by_key[(row["channel"], row["external_id"])].append(row)
    return by_key


async def settle(
    observed: Observed,
    submitted: Sequence[demo.Submitted],
    *,
    parked: Iterable[tuple[str, str]] = (),
    timeout: float = 120.0,
) -> float:
    """Wait, without touching anything, until every accepted order is final and the system is
    quiet; returns the seconds it took. ``parked``: (channel, external id) of orders whose
    event was dead-lettered on purpose (they stop where the dead letter left them)."""
    started = time.monotonic()
    skip = set(parked)
    want = {
        (i.channel, i.external_id): FINAL[i.expect]
        for i in submitted
        if i.expect in FINAL and (i.channel, i.external_id) not in skip
    }
    nc = await nats.connect(observed.nats_url, **observed.nats_options)
    try:
        js = nc.jetstream()
        last = "nothing checked yet"
        while time.monotonic() - started < timeout:
            orders = await intake_orders(observed)
            behind = [
                (k, [r["status"] for r in orders.get(k, [])])
                for k, status in want.items()
                if [r["status"] for r in orders.get(k, [])] != [status]
            ]
            busy = [] if behind else await consumers_quiet(js)
            left = [] if behind or busy else await outboxes_empty(observed)
            if not (behind or busy or left):
                return time.monotonic() - started
            last = (
                f"{len(behind)} orders not final, e.g. {behind[:3]}" if behind else str(busy + left)
            )
            await asyncio.sleep(0.5)
    finally:
        await nc.close()
    raise AssertionError(f"the system did not settle within {timeout:.0f}s: {last}")


async def check(
    observed: Observed,
    submitted: Sequence[demo.Submitted],
    *,
    dead_letters: Sequence[ExpectedDeadLetter] = (),
    seeded: dict[str, int] | None = None,
) -> Report:
    """Check every invariant (call after ``settle``); returns a report with the figures."""
    report = Report()
    nc = await nats.connect(observed.nats_url, **observed.nats_options)
    try:
        js = nc.jetstream()
        intake_events = await read_stream(js, streams.INTAKE.name)
        letters = await read_stream(js, streams.DEAD_LETTERS.name)
        busy = await consumers_quiet(js)
    finally:
        await nc.close()
    for text_ in busy:
        report.fail(f"not quiet: {text_}")
    for text_ in await outboxes_empty(observed):
        report.fail(f"not quiet: {text_}")

    orders = await intake_orders(observed)
    _check_answers(report, submitted, intake_events, orders)
    accepted_ids = {rows[0]["order_id"]: rows[0] for rows in orders.values() if len(rows) == 1}
    await _check_applied_once(report, observed, accepted_ids)
    await _check_stock(report, observed, accepted_ids, seeded)
    await _check_dead_letters(report, observed, letters, dead_letters)
    report.figures.update(
        submissions=len(submitted),
        orders=sum(len(v) for v in orders.values()),
        delivered=sum(1 for r in accepted_ids.values() if r["status"] == "delivered"),
        dead_letters=len(letters),
    )
    return report


def _check_answers(
    report: Report,
    submitted: Sequence[demo.Submitted],
    events: list[Msg],
    orders: dict[tuple[str, str], list[dict[str, Any]]],
) -> None:
    answers: dict[tuple[str, str], list[tuple[str, str]]] = collections.defaultdict(list)
    accepted_events: dict[str, set[str]] = collections.defaultdict(set)
    seen_event_ids: set[str] = set()
    for msg in events:
        env = _envelope(msg)
        kind = env.get("type")
        if kind not in ("order_accepted", "order_rejected", "order_duplicate"):
            continue
        if env["event_id"] in seen_event_ids:
            # The same event stored twice (a relay past the duplicate window): the consumers'
            # inboxes skip it, so it is one answer.
            continue
        seen_event_ids.add(env["event_id"])
        data = env["data"]
        answers[(data["channel"], data.get("external_id"))].append(
            (kind.removeprefix("order_"), data["order_id"])
        )
        if kind == "order_accepted":
            accepted_events[data["order_id"]].add(env["event_id"])
    want: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    for item in submitted:
        want[(item.channel, item.external_id)].append(
            ANSWER.get(item.expect, "duplicate" if item.expect == "duplicate" else item.expect)
        )
    for key, outcomes in want.items():
        got = answers.get(key, [])
        if sorted(o for o, _ in got) != sorted(outcomes):
            report.fail(f"{key}: answered {sorted(o for o, _ in got)}, expected {sorted(outcomes)}")
        ids = {oid for o, oid in got if o in ("accepted", "duplicate")}
        if len(ids) > 1:
            report.fail(f"{key}: answered with different order ids {sorted(ids)}")
        accepted = "accepted" in outcomes
        rows = orders.get(key, [])
        if accepted and len(rows) != 1:
            report.fail(f"{key}: {len(rows)} order rows, expected 1")
    for order_id, event_ids in accepted_events.items():
        if len(event_ids) > 1:
            report.fail(f"order {order_id} accepted by {len(event_ids)} different events")
    report.figures["answers"] = sum(len(v) for v in answers.values())


def _envelope(msg: Msg) -> dict[str, Any]:
    """An envelope's fields, or nothing for the garbage a fault test put in the stream."""
    try:
        decode_envelope(msg.data)
    except Exception:
        return {}
    env: dict[str, Any] = orjson.loads(msg.data)
    return env


def _lines(order_doc: bytes) -> collections.Counter[str]:
    want: collections.Counter[str] = collections.Counter()
    for line in orjson.loads(order_doc)["lines"]:
        want[line["sku"]] += int(line["quantity"])
    return want


async def _check_applied_once(
    report: Report, observed: Observed, orders: dict[str, dict[str, Any]]
) -> None:
    urls = observed.database_urls
    held: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for row in await query(
        urls["inventory"],
        "SELECT order_id, sku, quantity FROM reservations WHERE status IN ('reserved', 'shipped')",
    ):
        held[row["order_id"]][row["sku"]] += row["quantity"]
    for order_id, lines in held.items():
        order = orders.get(order_id)
        if order is not None and lines != _lines(order["order_doc"]):
            report.fail(
                f"order {order_id}: reserved {dict(lines)} for lines {order['order_doc']!r}"
            )
    shipments: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for row in await query(
        urls["fulfillment"],
        "SELECT order_id, warehouse, lines, shipped_at, delivered_at FROM shipments",
    ):
        shipments[row["order_id"]].append(row)
    notes: collections.Counter[tuple[str, str]] = collections.Counter(
        (r["order_id"], r["template"])
        for r in await query(urls["notify"], "SELECT order_id, template FROM notifications")
    )
    delivered = 0
    for order_id, order in orders.items():
        if order["status"] != "delivered":
            continue
        delivered += 1
        units: collections.Counter[str] = collections.Counter()
        for shipment in shipments.get(order_id, []):
            for line in orjson.loads(shipment["lines"]):
                units[line["sku"]] += int(line["quantity"])
        if units != _lines(order["order_doc"]):
            report.fail(f"order {order_id}: shipments carry {dict(units)}, not its lines")
        for template in CUSTOMER_ONCE:
            if notes[(order_id, template)] != 1:
                report.fail(f"order {order_id}: {notes[(order_id, template)]}x {template}")
        for template, column in PER_SHIPMENT.items():
            n = sum(1 for s in shipments.get(order_id, []) if s[column] is not None)
            if notes[(order_id, template)] != n:
                report.fail(
                    f"order {order_id}: {notes[(order_id, template)]}x {template} for {n} shipments"
                )
    report.figures["notifications"] = sum(notes.values())


async def _check_stock(
    report: Report,
    observed: Observed,
    orders: dict[str, dict[str, Any]],
    seeded: dict[str, int] | None,
) -> None:
    url = observed.database_urls["inventory"]
    stock = {
        r["sku"]: r
        for r in await query(
            url,
            "SELECT sku, sum(on_hand) AS on_hand, sum(reserved) AS reserved, "
            "sum(shipped) AS shipped, sum(returned) AS returned FROM stock GROUP BY sku",
        )
    }
    ledger = {
        r["sku"]: r
        for r in await query(
            url,
            "SELECT sku, sum(delta_on_hand) AS on_hand, sum(delta_reserved) AS reserved "
            "FROM ledger GROUP BY sku",
        )
    }
    held: dict[tuple[str, str], int] = {
        (r["sku"], r["status"]): r["n"]
        for r in await query(
            url, "SELECT sku, status, sum(quantity) AS n FROM reservations GROUP BY sku, status"
        )
    }
    shipped_by_orders: collections.Counter[str] = collections.Counter()
    for order in orders.values():
        if order["status"] in ("shipped", "delivered"):
            shipped_by_orders.update(_lines(order["order_doc"]))
    for sku, row in stock.items():
        book = ledger.get(sku, {"on_hand": 0, "reserved": 0})
        if (row["on_hand"], row["reserved"]) != (book["on_hand"], book["reserved"]):
            report.fail(f"{sku}: stock {dict(row)} does not match its ledger {dict(book)}")
        if row["reserved"] != held.get((sku, "reserved"), 0):
            report.fail(
                f"{sku}: {row['reserved']} reserved, reservations hold "
                f"{held.get((sku, 'reserved'), 0)}"
            )
        if row["shipped"] != shipped_by_orders[sku]:
            report.fail(
                f"{sku}: {row['shipped']} shipped, the shipped orders hold {shipped_by_orders[sku]}"
            )
        if seeded is not None and row["on_hand"] + row["shipped"] - row["returned"] != seeded.get(
            sku, 0
        ):
            report.fail(f"{sku}: on hand + shipped - returned is not the {seeded.get(sku)} seeded")
        if not 0 <= row["reserved"] <= row["on_hand"]:
            report.fail(f"{sku}: oversold ({dict(row)})")


async def _check_dead_letters(
    report: Report,
    observed: Observed,
    letters: list[Msg],
    expected: Sequence[ExpectedDeadLetter],
) -> None:
    found: set[int] = set()
    for want in expected:
        hits = [i for i, m in enumerate(letters) if want.matches(m)]
        if not hits:
            report.fail(f"dead letter missing: {want.what}")
            continue
        for i in hits:
            reason = (letters[i].headers or {}).get("Orderflow-Error", "")
            if want.reason_contains.lower() not in reason.lower():
                report.fail(f"dead letter for {want.what} says {reason!r}")
        found.update(hits)
    for i, msg in enumerate(letters):
        headers = msg.headers or {}
        if not headers.get("Orderflow-Error"):
            report.fail(f"dead letter {msg.subject} #{i} without a reason")
        if i not in found:
            report.fail(
                f"unexpected dead letter on {msg.subject}: {headers.get('Orderflow-Error')!r} "
                f"({(msg.data or b'')[:120]!r})"
            )
    [row] = await query(
        observed.database_urls["notify"],
        "SELECT count(*) AS n FROM notifications WHERE template = 'alert_dead_letter'",
    )
    if row["n"] != len(letters):
        report.fail(f"{len(letters)} dead letters raised {row['n']} operations alerts")
