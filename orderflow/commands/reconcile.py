"""``orderflow reconcile``: check the live system end to end, print every discrepancy, and exit 1
if there is any.

Nothing here reads a service's database. Each service answers over NATS with its facts: per
order a page at a time (``audit_orders``, keyset-paged by order id), stock per SKU and warehouse
a page of SKUs at a time (``audit_stock``), and aggregates (``audit_facts``: the outbox backlog).
Dead letters are read from JetStream's own consumer info. A live system has orders in flight,
so a finding counts only if it is still there after ``--settle`` seconds (a second look).
"""

from __future__ import annotations

import argparse
import asyncio
from collections import defaultdict
from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any

from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from orderflow import endpoints
from orderflow.commands import EXIT_REFUSED, add_json_flag, print_result, with_nats
from shared import audit, rpc, streams, subjects

RANK = {
    "accepted": 10,
    "backordered": 20,
    "reserved": 30,
    "queued": 40,
    "picked": 50,
    "packed": 60,
    "shipped": 70,
    "delivery_failed": 70,  # the parcel has left; intake's view stays at shipped
    "delivered": 80,
    "cancelled": 100,
}
OPEN_SHIPMENT = ("queued", "picked", "packed")


@dataclass(frozen=True)
class Finding:
    check: str
    key: str
    message: str


@dataclass
class Facts:
    """What the services said, gathered for one look."""

    missing: dict[str, str]
    intake: dict[str, dict[str, Any]]
    inventory: dict[str, dict[str, Any]]
    fulfillment: dict[str, dict[str, Any]]
    notify: dict[str, dict[str, Any]]
    stock: list[dict[str, Any]]
    outbox: dict[str, dict[str, Any]]
    dead_letters: dict[str, Any]


def register(sub: Any) -> None:
    rec = sub.add_parser(
        "reconcile",
        help="check orders, stock, money, outboxes and dead letters across the four services",
    )
    rec.add_argument(
        "--outbox-age",
        type=float,
        default=60.0,
        help="flag an unpublished outbox row older than this many seconds (default 60)",
    )
    rec.add_argument(
        "--settle",
        type=float,
        default=5.0,
        help="seconds before the second look that confirms a finding (default 5; 0: one look)",
    )
    rec.add_argument("--page", type=int, default=1000, help="orders per request (default 1000)")
    rec.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    add_json_flag(rec)
    rec.set_defaults(func=cmd_reconcile)


def cmd_reconcile(args: argparse.Namespace) -> int:
    result = with_nats(
        lambda nc: reconcile(nc, args.outbox_age, args.settle, args.page, args.timeout)
    )
    print_result(args.json, result, render)
    return EXIT_REFUSED if result["discrepancies"] else 0


async def reconcile(
    nc: NATS,
    outbox_age_s: float = 60.0,
    settle_s: float = 5.0,
    page: int = 1000,
    timeout: float = 10.0,
) -> dict[str, Any]:
    """Look, and if anything is off, look again after ``settle_s``: report what stayed off."""
    facts = await gather(nc, page, timeout)
    findings, summary = check(facts, outbox_age_s)
    if findings and settle_s > 0:
        await asyncio.sleep(settle_s)
        facts = await gather(nc, page, timeout)
        again, summary = check(facts, outbox_age_s)
        first = {(f.check, f.key) for f in findings}
        findings = [f for f in again if (f.check, f.key) in first]
    return {
        "ok": not findings,
        "discrepancies": [asdict(f) for f in findings],
        **summary,
    }


async def gather(nc: NATS, page: int, timeout: float) -> Facts:
    token = endpoints.operator_token()
    facts_of, missing = await audit.ask_all(nc, audit.FACTS, {}, timeout, token)

    async def pages(service: str, command: str, key: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        after = ""
        while True:
            answer = await rpc.call(
                nc, service, command, {"after": after, "limit": page}, timeout=timeout, token=token
            )
            found.extend(answer[key])
            if not answer.get("next"):
                return found
            after = answer["next"]

    async def orders_of(service: str) -> dict[str, dict[str, Any]]:
        if service in missing:
            return {}
        try:
            return {o["order_id"]: o for o in await pages(service, audit.ORDERS, "orders")}
        except Exception as exc:
            missing[service] = f"paging its orders failed: {exc!r}"
            return {}

    async def stock() -> list[dict[str, Any]]:
        if subjects.INVENTORY in missing:
            return []
        try:
            return await pages(subjects.INVENTORY, audit.STOCK, "stock")
        except Exception as exc:
            missing[subjects.INVENTORY] = f"paging its stock failed: {exc!r}"
            return []

    intake, inventory, fulfillment, notify, levels, letters = await asyncio.gather(
        orders_of(subjects.INTAKE),
        orders_of(subjects.INVENTORY),
        orders_of(subjects.FULFILLMENT),
        orders_of(subjects.NOTIFY),
        stock(),
        dead_letters(nc),
    )
    return Facts(
        missing=missing,
        intake=intake,
        inventory=inventory,
        fulfillment=fulfillment,
        notify=notify,
        stock=levels,
        outbox={s: f.get("outbox", {}) for s, f in facts_of.items()},
        dead_letters=letters,
    )


async def dead_letters(nc: NATS) -> dict[str, Any]:
    """The dead-letter stream's size and, per durable consumer, what it has not acknowledged
    (JetStream's consumer info: pending = not yet delivered, ack_pending = delivered, not acked)."""
    js = nc.jetstream()
    try:
        info = await js.stream_info(streams.DEAD_LETTERS.name)
    except NotFoundError:
        return {"messages": 0, "consumers": {}}
    consumers = {
        c.name: {"pending": int(c.num_pending or 0), "ack_pending": int(c.num_ack_pending or 0)}
        for c in await js.consumers_info(streams.DEAD_LETTERS.name)
    }
    return {"messages": int(info.state.messages), "consumers": consumers}


def check(facts: Facts, outbox_age_s: float) -> tuple[list[Finding], dict[str, Any]]:
    findings: list[Finding] = []
    for service, why in sorted(facts.missing.items()):
        findings.append(Finding("services", service, f"{service} did not answer: {why}"))
    for service, backlog in sorted(facts.outbox.items()):
        age = backlog.get("oldest_age_s")
        if age is not None and age > outbox_age_s:
            findings.append(
                Finding(
                    "outbox",
                    service,
                    f"{service} has {backlog['pending']} unpublished outbox rows, the oldest "
                    f"{age:.0f}s old (threshold {outbox_age_s:g}s)",
                )
            )
    letters = facts.dead_letters
    if letters["messages"] and not letters["consumers"]:
        findings.append(
            Finding(
                "dead_letters",
                streams.DEAD_LETTERS.name,
                f"{letters['messages']} dead letters and no consumer has acknowledged any",
            )
        )
    for name, state in sorted(letters["consumers"].items()):
        waiting = state["pending"] + state["ack_pending"]
        if waiting:
            findings.append(
                Finding(
                    "dead_letters",
                    name,
                    f"{waiting} dead letters not acknowledged by consumer {name} "
                    f"({state['pending']} not delivered, {state['ack_pending']} unacked)",
                )
            )
    findings += check_orders(facts)
    findings += check_stock(facts.stock)
    money, money_findings = check_money(facts)
    findings += money_findings
    summary = {
        "orders": len(facts.intake),
        "stock_rows": len(facts.stock),
        "money": money,
        "outbox": facts.outbox,
        "dead_letters": letters,
        "answered": sorted(set(subjects.SERVICES) - set(facts.missing)),
    }
    return findings, summary


def check_orders(facts: Facts) -> list[Finding]:
    """Every accepted order in one consistent state across the four services."""
    out: list[Finding] = []
    if facts.missing:
        return out  # one side unknown: comparing would only report the gap again

    def say(order_id: str, message: str) -> None:
        out.append(Finding("orders", order_id, f"order {order_id}: {message}"))

    for order_id, view in facts.intake.items():
        status = view["status"]
        inv = facts.inventory.get(order_id)
        ful = facts.fulfillment.get(order_id)
        if order_id not in facts.notify:
            say(order_id, "accepted, but notify has no recipient for it")
        if inv is None:
            say(order_id, f"intake shows {status}, but inventory has never heard of it")
            continue
        units = inv["units"]
        shipments = {s: n for s, n in (ful or {}).get("shipments", {}).items() if s != "cancelled"}
        cancelled_by_fulfillment = ful is not None and ful["status"] == "cancelled"
        if status == "cancelled":
            if not cancelled_by_fulfillment:
                say(order_id, "intake shows cancelled, but fulfillment has not cancelled it")
            if units.get("reserved") or units.get("shipped"):
                say(order_id, f"cancelled, but inventory still holds {units}")
            if inv["backorder"] == "waiting":
                say(order_id, "cancelled, but its backorder is still waiting for stock")
            continue
        if cancelled_by_fulfillment:
            say(order_id, f"fulfillment cancelled it, but intake shows {status}")
            continue
        if status == "accepted":
            say(order_id, f"intake still shows accepted; inventory has {_inventory_state(inv)}")
        elif status == "backordered":
            if inv["backorder"] != "waiting" or units:
                say(order_id, f"intake shows backordered; inventory has {_inventory_state(inv)}")
        elif not units:
            say(order_id, f"intake shows {status}; inventory has {_inventory_state(inv)}")
        furthest = max((RANK[s] for s in shipments), default=RANK["reserved"])
        if status not in ("accepted", "backordered") and RANK[status] != furthest:
            where = ", ".join(f"{n} {s}" for s, n in sorted(shipments.items())) or "no shipment"
            say(order_id, f"intake shows {status}; fulfillment has {where}")
        if status in ("shipped", "delivered") and not units.get("shipped"):
            say(order_id, f"intake shows {status}, but inventory shipped nothing ({units})")
        if status in OPEN_SHIPMENT and units.get("shipped"):
            say(order_id, f"intake shows {status}, but inventory already shipped {units}")
    for side, known in (("inventory", facts.inventory), ("fulfillment", facts.fulfillment)):
        for order_id in sorted(set(known) - set(facts.intake)):
            say(order_id, f"{side} knows it, but intake has no accepted order with that id")
    for order_id, inv in facts.inventory.items():
        ful = facts.fulfillment.get(order_id)
        if ful is not None and ful["status"] == "cancelled" and inv["units"].get("reserved"):
            say(order_id, "fulfillment cancelled it, but inventory still holds its reservation")
    return out


def _inventory_state(inv: dict[str, Any]) -> str:
    parts = [f"{n} units {s}" for s, n in sorted(inv["units"].items())]
    if inv["backorder"]:
        parts.append(f"backorder {inv['backorder']}")
    if inv["cancelled"]:
        parts.append("a cancellation")
    return ", ".join(parts) or "nothing"


def check_stock(levels: list[dict[str, Any]]) -> list[Finding]:
    """Per SKU and warehouse: on hand = available + reserved, and the ledger agrees."""
    out: list[Finding] = []
    for r in levels:
        key = f"{r['sku']}@{r['warehouse']}"

        def say(message: str, key: str = key) -> None:
            out.append(Finding("stock", key, f"{key}: {message}"))

        if r["on_hand"] is None:
            say(
                f"the ledger has movements (on hand {r['ledger_on_hand']:+}, reserved "
                f"{r['ledger_reserved']:+}) but there is no stock row"
            )
            continue
        if r["on_hand"] != r["available"] + r["reserved"] or r["available"] < 0:
            say(f"on hand {r['on_hand']} != available {r['available']} + reserved {r['reserved']}")
        if r["on_hand"] != r["ledger_on_hand"]:
            say(f"on hand {r['on_hand']}, but the ledger sums to {r['ledger_on_hand']}")
        if r["reserved"] != r["ledger_reserved"]:
            say(f"reserved {r['reserved']}, but the ledger sums to {r['ledger_reserved']}")
        if r["reserved"] != r["open_reservations"]:
            say(f"reserved {r['reserved']}, but open reservations hold {r['open_reservations']}")
    return out


def check_money(facts: Facts) -> tuple[dict[str, dict[str, str]], list[Finding]]:
    """Per currency: value accepted = shipped + cancelled + in flight. Shipped is fulfillment's
    (shipment lines at the order's prices), accepted and cancelled are intake's; in flight is
    what neither shipped nor cancelled. Per order, shipped value must not exceed the order's
    total, and an order whose every shipment has left must have shipped exactly its total."""
    out: list[Finding] = []
    money: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    unpriced = 0
    for order_id, view in facts.intake.items():
        currency, total = view["currency"], Decimal(view["total"])
        ful = facts.fulfillment.get(order_id)
        shipped = Decimal(ful["shipped_value"]) if ful else Decimal(0)
        row = money[currency]
        row["accepted"] += total
        if ful is not None and not ful["priced"]:
            unpriced += 1
        if ful is not None and ful["currency"] and ful["currency"] != currency:
            out.append(
                Finding(
                    "money",
                    order_id,
                    f"order {order_id}: intake says {currency}, fulfillment {ful['currency']}",
                )
            )
        if view["status"] == "cancelled":
            row["cancelled"] += total
            if shipped:
                out.append(
                    Finding("money", order_id, f"order {order_id}: cancelled but {shipped} shipped")
                )
            continue
        row["shipped"] += shipped
        row["in_flight"] += total - shipped
        if shipped > total:
            out.append(
                Finding(
                    "money",
                    order_id,
                    f"order {order_id}: shipped {shipped} {currency} of a {total} order",
                )
            )
        all_left = (
            ful is not None
            and ful["priced"]
            and ful["shipments"]
            and not any(s in OPEN_SHIPMENT for s in ful["shipments"])
            and any(s in ("shipped", "delivered", "delivery_failed") for s in ful["shipments"])
        )
        if all_left and shipped != total:
            out.append(
                Finding(
                    "money",
                    order_id,
                    f"order {order_id}: every shipment left, {shipped} shipped of {total}",
                )
            )
    table: dict[str, dict[str, str]] = {}
    for currency, row in sorted(money.items()):
        parts = row["shipped"] + row["cancelled"] + row["in_flight"]
        if parts != row["accepted"]:
            out.append(
                Finding(
                    "money",
                    currency,
                    f"{currency}: accepted {row['accepted']} != shipped + cancelled + in flight "
                    f"{parts}",
                )
            )
        table[currency] = {
            k: str(row[k]) for k in ("accepted", "shipped", "cancelled", "in_flight")
        }
    if unpriced:
        table["_unpriced_orders"] = {"count": str(unpriced)}
    return table, out


def render(result: dict[str, Any]) -> str:
    lines = [
        f"reconcile: {result['orders']} accepted orders, {result['stock_rows']} stock rows; "
        f"services answering: {', '.join(result['answered']) or 'none'}"
    ]
    lines.append("money (per currency): accepted = shipped + cancelled + in flight")
    for currency, row in result["money"].items():
        if currency.startswith("_"):
            lines.append(f"  ({row['count']} orders without prices: not counted as shipped)")
            continue
        lines.append(
            f"  {currency}  {row['accepted']:>14} = {row['shipped']:>12} + "
            f"{row['cancelled']:>12} + {row['in_flight']:>12}"
        )
    for service, backlog in sorted(result["outbox"].items()):
        age = backlog.get("oldest_age_s")
        oldest = "" if age is None else f", oldest {age:.1f}s"
        lines.append(f"outbox {service}: {backlog.get('pending', 0)} unpublished{oldest}")
    letters = result["dead_letters"]
    lines.append(f"dead letters: {letters['messages']} in {streams.DEAD_LETTERS.name}")
    found = result["discrepancies"]
    if not found:
        lines.append("OK: no discrepancy")
        return "\n".join(lines)
    lines.append(f"{len(found)} DISCREPANCIES:")
    lines += [f"  [{f['check']}] {f['message']}" for f in found]
    return "\n".join(lines)
