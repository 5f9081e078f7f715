"""Notifications (notify): what an order's customer was told, through which sinks, with what
result; the deliveries that were given up; sending one again."""

from __future__ import annotations

import argparse
import json
from typing import Any

from orderflow.commands import add_json_flag, call_service
from shared import rpc

FAILED = "failed"
RESEND = "resend"


def register(sub: Any) -> None:
    notifications = sub.add_parser(
        "notifications",
        help="what was sent about an order; failed deliveries; resend one",
        description=(
            "orderflow notifications ORDER_ID        what was sent about the order, when, "
            "where and with what result\n"
            "orderflow notifications failed          deliveries given up after their last "
            "attempt\n"
            "orderflow notifications resend ID       send a failed delivery again (--force: "
            "even a sent one)"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    notifications.add_argument("target", metavar="ORDER_ID|failed|resend")
    notifications.add_argument(
        "delivery_id", nargs="?", default=None, help="with resend: the delivery to send again"
    )
    notifications.add_argument(
        "--force", action="store_true", help="with resend: send it even if it was sent"
    )
    notifications.add_argument(
        "--limit", type=int, default=50, help="with failed: most deliveries to list"
    )
    add_json_flag(notifications)
    notifications.set_defaults(func=cmd_notifications)


def cmd_notifications(args: argparse.Namespace) -> int:
    if args.target == RESEND:
        return _resend(args)
    if args.delivery_id is not None:
        raise rpc.CommandRefused(f"unexpected argument {args.delivery_id!r}")
    if args.target == FAILED:
        return _failed(args)
    return _of_order(args)


def _of_order(args: argparse.Namespace) -> int:
    notes: list[dict[str, Any]] = call_service("notify", "notifications", {"order_id": args.target})
    if args.json:
        print(json.dumps(notes, indent=2, ensure_ascii=False))
        return 0
    if not notes:
        print(f"order {args.target}: no notifications (yet)")
        return 0
    print(f"order {args.target}: {len(notes)} notification(s)")
    for note in notes:
        print(
            f"  {note['created_at']}  {note['template']} to {note['recipient']} "
            f"({note['locale']}): {note['subject']}"
        )
        if not note["deliveries"]:
            print("      no sink takes or can reach this recipient")
        for d in note["deliveries"]:
            print(f"      {_delivery_line(d)}")
    return 0


def _delivery_line(d: dict[str, Any]) -> str:
    when = d.get("sent_at") or d.get("failed_at") or d.get("next_attempt_at") or ""
    tries = f"{d['attempts']} attempt{'s' if d['attempts'] != 1 else ''}"
    line = f"{d['sink']:<10} {d['status']:<8} {when:<32} {tries:<11} delivery {d['delivery_id']}"
    if d.get("last_error") and d["status"] != "sent":
        line += f"  last error: {d['last_error']}"
    return line


def _failed(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = call_service("notify", "failed_deliveries", {"limit": args.limit})
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return 0
    if not rows:
        print("no failed deliveries")
        return 0
    for r in rows:
        print(
            f"{r['failed_at']}  {r['sink']:<10} {r['template']:<22} to {r['address']}  "
            f"order {r['order_id'] or '-'}  {r['attempts']} attempts  delivery {r['delivery_id']}"
        )
        print(f"    last error: {r['last_error']}")
    print("resend one with: orderflow notifications resend DELIVERY_ID")
    return 0


def _resend(args: argparse.Namespace) -> int:
    if not args.delivery_id:
        raise rpc.CommandRefused("resend needs the delivery id (orderflow notifications failed)")
    queued = call_service(
        "notify", "resend", {"delivery_id": args.delivery_id, "force": args.force}
    )
    if args.json:
        print(json.dumps(queued, indent=2, ensure_ascii=False))
    else:
        print(
            f"delivery {queued['delivery_id']} queued to be sent again by {queued['sink']} "
            f"to {queued['address']} (attempts so far: {queued['attempts_so_far']})"
        )
    return 0
