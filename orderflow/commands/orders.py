"""Orders (intake): submit one, show its status."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from orderflow.commands import EXIT_REFUSED, add_json_flag, call_service
from shared import rpc


def register(sub: Any) -> None:
    submit = sub.add_parser("submit", help="submit one order (JSON) and print its answer")
    submit.add_argument("file", nargs="?", default="-", help="JSON file, or - for stdin")
    submit.add_argument(
        "--channel", default=None, help="channel (default: the order's own, else web)"
    )
    add_json_flag(submit)
    submit.set_defaults(func=cmd_submit)

    status = sub.add_parser("status", help="show an order's current status")
    status.add_argument("order_id")
    add_json_flag(status)
    status.set_defaults(func=cmd_status)


def cmd_submit(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    try:
        order = json.loads(text)
    except json.JSONDecodeError as exc:
        raise rpc.CommandRefused(f"the order is not valid JSON: {exc}") from exc
    if not isinstance(order, dict):
        raise rpc.CommandRefused("the order must be a JSON object")
    channel = args.channel or order.get("channel") or "web"
    answer = call_service("intake", "submit", {"channel": channel, "order": order})
    if args.json:
        print(json.dumps(answer, indent=2))
    elif answer["outcome"] == "rejected":
        print(f"rejected (order id {answer['order_id']}):")
        for err in answer["errors"]:
            print(f"  {err['field']}: {err['reason']}")
    else:
        print(f"{answer['outcome']}: order id {answer['order_id']}")
    return EXIT_REFUSED if answer["outcome"] == "rejected" else 0


def cmd_status(args: argparse.Namespace) -> int:
    status = call_service("intake", "status", {"order_id": args.order_id})
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"order {status['order_id']}: {status['status']}")
    for key in ("channel", "external_id", "priority", "total", "currency"):
        if status.get(key) is not None:
            print(f"  {key:<12} {status[key]}")
    for stage, at in status.get("stages", {}).items():
        print(f"  {stage:<12} {at}")
    for err in status.get("errors", []):
        print(f"  {err['field']}: {err['reason']}")
    return 0
