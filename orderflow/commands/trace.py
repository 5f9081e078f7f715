"""``orderflow trace <order_id>``: what every service knows of one order, as one timeline.

The four services are asked at once over NATS (``shared.audit.gather_trace``); one that does not
answer within ``--timeout`` is named, and the others' answers are still shown.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from orderflow import endpoints
from orderflow.commands import EXIT_REFUSED, add_json_flag, print_result, with_nats
from shared import audit


def register(sub: Any) -> None:
    trace = sub.add_parser(
        "trace", help="one order's history across the four services (who, when, why, events)"
    )
    trace.add_argument("order_id")
    trace.add_argument(
        "--timeout", type=float, default=2.0, help="seconds to wait for each service (default 2)"
    )
    add_json_flag(trace)
    trace.set_defaults(func=cmd_trace)


def cmd_trace(args: argparse.Namespace) -> int:
    try:
        found = with_nats(
            lambda nc: audit.gather_trace(
                nc, args.order_id, args.timeout, endpoints.operator_token()
            )
        )
    except ValueError:
        print(f"refused: not an order id: {args.order_id!r}", file=sys.stderr)
        return EXIT_REFUSED
    print_result(args.json, found, render)
    for service, why in found["missing"].items():
        print(f"warning: {service} did not answer: {why}", file=sys.stderr)
    if not found["entries"]:
        print(f"no service knows order {args.order_id}", file=sys.stderr)
        return EXIT_REFUSED
    return 0


def render(found: dict[str, Any]) -> str:
    lines = [f"order {found['order_id']}"]
    answered = ", ".join(found["answered"]) or "none"
    lines.append(f"  answered: {answered}")
    for service, why in found["missing"].items():
        lines.append(f"  NO ANSWER from {service}: {why}")
    lines.append("")
    lines.append(f"{'time (UTC)':<26} {'service':<11} {'kind':<9} {'what':<34} detail")
    for e in found["entries"]:
        when = (e.get("time") or "-")[:26].replace("+00:00", "")
        detail = []
        if e.get("by"):
            detail.append(f"by {e['by']}")
        if e.get("why"):
            detail.append(str(e["why"]))
        if e.get("stream_seq") is not None:
            stream = e.get("stream") or _stream_of(e.get("subject"))
            detail.append(f"{stream}#{e['stream_seq']}")
        if e.get("kind") == "produced" and not e.get("published", True):
            detail.append("NOT YET PUBLISHED")
        lines.append(
            f"{when:<26} {e.get('service', '?'):<11} {e.get('kind', ''):<9} "
            f"{str(e.get('what', ''))[:34]:<34} {'; '.join(detail)}"
        )
    return "\n".join(lines)


def _stream_of(subject: str | None) -> str:
    parts = (subject or "").split(".")
    if len(parts) > 1 and parts[1] == "submit":
        return "ORDERFLOW_SUBMISSIONS"
    if len(parts) > 1 and parts[1] in audit.EVENT_STREAMS:
        return audit.EVENT_STREAMS[parts[1]]
    return "?"
