"""Shipments (fulfillment): the work queue, the warehouse's moves, an order's shipments, returns.

Each move names the order; without ``--shipment`` it applies to every shipment of the order
that is ready for it (an order split across warehouses has one shipment per warehouse).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
from datetime import UTC, datetime
from typing import Any

from orderflow.commands import add_json_flag, call_service
from shared import rpc

SERVICE = "fulfillment"

MOVES = {
    "pick": "take an order's queued shipments off the shelves",
    "pack": "pack an order's picked shipments",
    "deliver": "record that an order's shipments were delivered",
}


def default_actor() -> str:
    """Who is acting, for the shipment log: $ORDERFLOW_ACTOR, else the login name."""
    try:
        return os.environ.get("ORDERFLOW_ACTOR") or getpass.getuser()
    except (OSError, KeyError):
        return "cli"


def register(sub: Any) -> None:
    for action, text in MOVES.items():
        parser = sub.add_parser(action, help=text)
        _move_args(parser)
        parser.set_defaults(func=cmd_move, move=action)

    ship = sub.add_parser("ship", help="hand an order's packed shipments to a carrier")
    _move_args(ship)
    ship.add_argument("--carrier", required=True, help="e.g. SF-EXPRESS")
    ship.add_argument("--tracking", required=True, help="the carrier's tracking number")
    ship.set_defaults(func=cmd_move, move="ship")

    failed = sub.add_parser(
        "delivery-failed", help="the carrier could not deliver (it may deliver later)"
    )
    _move_args(failed)
    failed.add_argument("--reason", default=None, help="what the carrier reported")
    failed.set_defaults(func=cmd_move, move="delivery-failed")

    queue = sub.add_parser("queue", help="the warehouse work queue, most pressing first")
    queue.add_argument("--limit", type=int, default=50)
    queue.add_argument("--warehouse", default=None, help="only this warehouse's work")
    add_json_flag(queue)
    queue.set_defaults(func=cmd_queue)

    shipments = sub.add_parser(
        "shipments", help="an order's shipments: status, deadlines, who did what, returns"
    )
    shipments.add_argument("order_id")
    add_json_flag(shipments)
    shipments.set_defaults(func=cmd_shipments)

    ret = sub.add_parser("return", help="record a customer's return of delivered goods")
    ret.add_argument("order_id")
    ret.add_argument(
        "--line",
        action="append",
        default=None,
        metavar="SKU=QTY",
        help="what comes back (repeatable); default: everything delivered",
    )
    ret.add_argument("--reason", default="customer return")
    ret.add_argument("--actor", default=None, help="who records it (default: you)")
    add_json_flag(ret)
    ret.set_defaults(func=cmd_return)

    received = sub.add_parser(
        "return-received",
        help="returned goods arrived: restock them and tell finance the refund",
    )
    received.add_argument("order_id")
    received.add_argument("--return", dest="return_id", default=None, help="only this return")
    received.add_argument("--actor", default=None, help="who received them (default: you)")
    add_json_flag(received)
    received.set_defaults(func=cmd_return_received)


def _move_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("order_id")
    parser.add_argument("--shipment", default=None, help="only this shipment of the order")
    parser.add_argument("--actor", default=None, help="who does it (default: you)")
    add_json_flag(parser)


def cmd_move(args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {"order_id": args.order_id, "actor": args.actor or default_actor()}
    if args.shipment:
        payload["shipment_id"] = args.shipment
    if args.move == "ship":
        payload.update(carrier=args.carrier, tracking_number=args.tracking)
    if args.move == "delivery-failed" and args.reason:
        payload["reason"] = args.reason
    moved = call_service(SERVICE, args.move, payload)
    if args.json:
        print(json.dumps(moved, indent=2))
        return 0
    for s in moved:
        line = f"{s['status']}: shipment {s['shipment_id']} of order {s['order_id']} ({s['warehouse']})"
        if args.move == "ship":
            line += f", {s['carrier']} {s['tracking_number']}"
        if args.move == "delivery-failed":
            line += f", failed deliveries so far: {s['failed_deliveries']}"
        print(line)
    return 0


def cmd_queue(args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {"limit": args.limit}
    if args.warehouse:
        payload["warehouse"] = args.warehouse
    listed = call_service(SERVICE, "queue", payload)
    if args.json:
        print(json.dumps(listed, indent=2))
        return 0
    print(format_queue(listed, datetime.now(UTC)))
    return 0


def format_queue(listed: list[dict[str, Any]], now: datetime) -> str:
    """The queue as a picker reads it: what to do next, for which order, by when, what to take."""
    if not listed:
        return "the work queue is empty"
    by_priority: dict[str, int] = {}
    for s in listed:
        by_priority[s["priority"]] = by_priority.get(s["priority"], 0) + 1
    overdue = sum(1 for s in listed if s["overdue"])
    counts = ", ".join(f"{p} {n}" for p, n in by_priority.items())
    out = [f"{len(listed)} shipment(s) waiting ({counts}); {overdue} overdue"]
    out.append(f"{'PRIORITY':<8}  {'DUE':<18}  {'NEXT':<5}  {'ORDER':<36}  {'WH':<6}  ITEMS")
    for s in listed:
        items = ", ".join(f"{line['quantity']} x {line['sku']}" for line in s["lines"])
        out.append(
            f"{s['priority']:<8}  {due_text(s, now):<18}  {s['next_action'] or '-':<5}  "
            f"{s['order_id']:<36}  {s['warehouse']:<6}  {items}"
        )
    return "\n".join(out)


def due_text(shipment: dict[str, Any], now: datetime) -> str:
    seconds = (datetime.fromisoformat(shipment["sla_deadline"]) - now).total_seconds()
    if seconds >= 0:
        return f"in {_span(seconds)}"
    label = "ESCALATED" if shipment.get("escalated") else "OVERDUE"
    return f"{label} {_span(-seconds)}"


def _span(seconds: float) -> str:
    if seconds < 60:
        return f"{int(seconds)}s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def _when(iso: str | None) -> str:
    if iso is None:
        return "-"
    return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M:%SZ")


def cmd_shipments(args: argparse.Namespace) -> int:
    found = call_service(SERVICE, "shipments", {"order_id": args.order_id})
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    print(format_shipments(args.order_id, found))
    return 0


def format_shipments(order_id: str, found: list[dict[str, Any]]) -> str:
    out = [f"order {order_id}: {len(found)} shipment(s)"]
    for s in found:
        flags = " OVERDUE" if s["overdue"] else ""
        flags += " ESCALATED" if s["escalated"] else ""
        out.append(
            f"shipment {s['shipment_id']}  {s['warehouse']}  {s['status']}{flags}  "
            f"({s['priority']} priority, {s['channel']})"
        )
        out.append("  items:    " + ", ".join(f"{x['quantity']} x {x['sku']}" for x in s["lines"]))
        out.append(f"  ship by:  {_when(s['sla_deadline'])}")
        if s["carrier"]:
            out.append(f"  carrier:  {s['carrier']} {s['tracking_number']}")
        for entry in s["log"]:
            detail = f"  {entry['detail']}" if entry["detail"] else ""
            out.append(f"  {_when(entry['at'])}  {entry['action']:<15} {entry['actor']}{detail}")
        for r in s.get("returns", []):
            out.append("  " + return_line(r))
    return "\n".join(out)


def return_line(r: dict[str, Any]) -> str:
    items = ", ".join(f"{q} x {sku}" for sku, q in sorted(r["lines"].items()))
    text = f"return {r['return_id']} {r['status']}: {items} from {r['warehouse']}"
    if r["refund_amount"] is not None:
        text += f"; refund due {r['refund_amount']} {r['currency']}"
    elif r["refund_note"]:
        text += f"; {r['refund_note']}"
    return text


def parse_lines(specs: list[str] | None) -> list[dict[str, Any]] | None:
    if not specs:
        return None
    lines = []
    for spec in specs:
        sku, sep, quantity = spec.partition("=")
        if not sep or not quantity.strip().isdigit():
            raise rpc.CommandRefused(f"--line {spec!r}: write it as SKU=QUANTITY, e.g. TEA-001=2")
        lines.append({"sku": sku.strip(), "quantity": int(quantity)})
    return lines


def cmd_return(args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {
        "order_id": args.order_id,
        "reason": args.reason,
        "actor": args.actor or default_actor(),
    }
    lines = parse_lines(args.line)
    if lines is not None:
        payload["lines"] = lines
    created = call_service(SERVICE, "return", payload)
    if args.json:
        print(json.dumps(created, indent=2))
        return 0
    for r in created:
        print(return_line(r))
    print(f"when the goods arrive: orderflow return-received {args.order_id}")
    return 0


def cmd_return_received(args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {"order_id": args.order_id, "actor": args.actor or default_actor()}
    if args.return_id:
        payload["return_id"] = args.return_id
    received = call_service(SERVICE, "receive-return", payload)
    if args.json:
        print(json.dumps(received, indent=2))
        return 0
    for r in received:
        print(return_line(r))
    return 0
