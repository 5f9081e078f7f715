"""Orders (intake): submit, import a spreadsheet, status, cancel, list; the customer directory.

Submissions go over HTTP with the channel's key from ``$ORDERFLOW_HOME/credentials.json`` (or
``ORDERFLOW_API_KEY``), exactly as a channel's own software would; the operator commands
(status, cancel, list, customers) are NATS requests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from orderflow import endpoints
from orderflow.commands import EXIT_REFUSED, EXIT_UNREACHABLE, add_json_flag, call_service
from services.intake.channels import spreadsheet
from shared import rpc
from shared.runtime import StartupError

IMPORT_BATCH = 1000


def register(sub: Any) -> None:
    submit = sub.add_parser(
        "submit", help="submit one order (canonical JSON or the channel's own payload)"
    )
    submit.add_argument("file", nargs="?", default="-", help="JSON file, or - for stdin")
    submit.add_argument(
        "--channel", default=None, help="submit as this channel (default: the order's, else web)"
    )
    add_json_flag(submit)
    submit.set_defaults(func=cmd_submit)

    imp = sub.add_parser(
        "import", help="submit the orders of a .csv or .xlsx sheet and report every row"
    )
    imp.add_argument("file", type=Path)
    imp.add_argument("--channel", default=spreadsheet.CHANNEL, help="default: spreadsheet")
    add_json_flag(imp)
    imp.set_defaults(func=cmd_import)

    status = sub.add_parser("status", help="an order's status, priority and timeline")
    status.add_argument("order_id")
    add_json_flag(status)
    status.set_defaults(func=cmd_status)

    cancel = sub.add_parser("cancel", help="ask to cancel an order (fulfillment decides)")
    cancel.add_argument("order_id")
    cancel.add_argument("--reason", default="cancelled on request")
    cancel.add_argument("--actor", default=None, help="for whom (recorded beside the operator)")
    add_json_flag(cancel)
    cancel.set_defaults(func=cmd_cancel)

    orders = sub.add_parser("orders", help="list orders; routing rules")
    orders.set_defaults(func=_usage(orders))
    orders_sub = orders.add_subparsers(metavar="ACTION")
    listing = orders_sub.add_parser("list", help="orders, newest first")
    listing.add_argument("--status", default=None)
    listing.add_argument("--channel", default=None)
    listing.add_argument("--since", default=None, help="RFC 3339 time or epoch seconds")
    listing.add_argument("--flagged", action="store_true", help="only suspected duplicates")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--after", default=None, help="cursor: the 'next' of a page")
    add_json_flag(listing)
    listing.set_defaults(func=cmd_list)
    rules = orders_sub.add_parser("rules", help="the routing rules, in the order they are tried")
    add_json_flag(rules)
    rules.set_defaults(func=cmd_rules)

    customer = sub.add_parser("customer", help="the customer directory routing reads")
    customer.set_defaults(func=_usage(customer))
    customer_sub = customer.add_subparsers(metavar="ACTION")
    setter = customer_sub.add_parser("set", help="set a customer's tier and account manager")
    setter.add_argument("customer", help="e-mail address or phone number")
    setter.add_argument("--tier", default=None, help="e.g. vip, key")
    setter.add_argument("--manager", default=None, help="the account manager")
    add_json_flag(setter)
    setter.set_defaults(func=cmd_customer_set)
    show = customer_sub.add_parser("show", help="a customer's tier and account manager")
    show.add_argument("customer")
    add_json_flag(show)
    show.set_defaults(func=cmd_customer_show)


def _usage(parser: argparse.ArgumentParser) -> Any:
    def show(_args: argparse.Namespace) -> int:
        parser.print_help()
        return EXIT_UNREACHABLE  # the exit code of a command line that names no action

    return show


def channel_key(channel: str) -> str:
    key = os.environ.get("ORDERFLOW_API_KEY")
    if key:
        return key
    path = endpoints.home() / "credentials.json"
    try:
        creds = json.loads(path.read_text())
    except FileNotFoundError:
        raise StartupError(
            f"no key for channel {channel}: {path} does not exist and ORDERFLOW_API_KEY is not "
            "set (`orderflow up` writes the file)"
        ) from None
    found = creds.get("channels", {}).get(channel)
    if not found:
        raise rpc.CommandRefused(f"{path} holds no key for channel {channel!r}")
    return str(found)


def post_json(path: str, body: Any, channel: str, timeout: float = 60.0) -> tuple[int, Any]:
    """POST to intake's HTTP API as ``channel``; the status and the decoded answer."""
    url = endpoints.service_url("intake") + path
    request = urllib.request.Request(
        url,
        data=body if isinstance(body, bytes) else json.dumps(body).encode(),
        headers={
            "Authorization": f"Bearer {channel_key(channel)}",
            "Content-Type": "application/json",
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        answer = json.loads(exc.read() or b"{}")
        if exc.code in (401, 403):
            raise rpc.CommandRefused(answer.get("error", exc.reason)) from None
        return exc.code, answer
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise StartupError(f"intake did not answer at {url}: {exc}") from None


def cmd_submit(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    try:
        order = json.loads(text)
    except json.JSONDecodeError as exc:
        raise rpc.CommandRefused(f"the order is not valid JSON: {exc}") from exc
    if not isinstance(order, dict):
        raise rpc.CommandRefused("the order must be a JSON object")
    channel = args.channel or order.get("channel") or "web"
    _, answer = post_json("/orders", order, channel)
    if "outcome" not in answer:
        raise rpc.CommandRefused(answer.get("error", "intake refused the submission"))
    if args.json:
        print(json.dumps(answer, indent=2))
    else:
        print_answer(answer)
    return EXIT_REFUSED if answer["outcome"] == "rejected" else 0


def print_answer(answer: dict[str, Any]) -> None:
    if answer["outcome"] == "rejected":
        print(f"rejected (order id {answer['order_id']}):")
        for err in answer["errors"]:
            print(f"  {err['field']}: {err['reason']}")
        return
    if answer["outcome"] == "duplicate":
        print(f"duplicate: already taken as order {answer['order_id']}")
        return
    print(f"accepted: order id {answer['order_id']}")
    if answer.get("priority"):
        print(
            f"  priority {answer['priority']} (rule {answer.get('priority_rule')}), "
            f"owner {answer.get('owner')}"
        )
    if answer.get("suspected_duplicate_of"):
        looks = ", ".join(answer["suspected_duplicate_of"])
        print(f"  flagged for review: same customer and lines as {looks}")


def cmd_import(args: argparse.Namespace) -> int:
    try:
        sheet = spreadsheet.read_sheet(args.file)
    except (spreadsheet.SheetError, OSError) as exc:
        raise rpc.CommandRefused(str(exc)) from exc
    report: list[dict[str, Any]] = [
        {"row": p.row, "outcome": "skipped", "errors": [{"column": p.column, "reason": p.reason}]}
        for p in sheet.stray
    ]
    sendable = [o for o in sheet.orders if not o.problems]
    for order in sheet.orders:
        if order.problems:
            report.extend(
                {
                    "row": p.row,
                    "order_ref": order.external_id,
                    "outcome": "skipped",
                    "errors": [{"column": p.column, "reason": p.reason}],
                }
                for p in order.problems
            )
    for start in range(0, len(sendable), IMPORT_BATCH):
        chunk = sendable[start : start + IMPORT_BATCH]
        status, result = post_json(
            "/orders:batch", {"orders": [o.doc for o in chunk]}, args.channel
        )
        if status != 200:
            raise rpc.CommandRefused(result.get("error", f"intake answered {status}"))
        for order, answer in zip(chunk, result["answers"], strict=True):
            report.extend(_rows_of(order, answer))
    report.sort(key=lambda r: r["row"])
    if args.json:
        print(json.dumps({"rows": report}, indent=2))
    else:
        for r in report:
            ref = f" {r['order_ref']}" if r.get("order_ref") else ""
            line = f"row {r['row']}{ref}: {r['outcome']}"
            if r.get("order_id"):
                line += f" (order {r['order_id']})"
            print(line)
            for err in r.get("errors", []):
                print(f"    {err['column']}: {err['reason']}")
        counts: dict[str, int] = {}
        for r in report:
            counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
        summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
        print(f"{sheet.rows} rows, {len(sheet.orders)} orders: {summary}")
    failed = any(r["outcome"] in ("rejected", "skipped") for r in report)
    return EXIT_REFUSED if failed else 0


def _rows_of(order: spreadsheet.SheetOrder, answer: dict[str, Any]) -> list[dict[str, Any]]:
    """The answer to one order, spread over its rows: each error on the row and column to fix."""
    by_row: dict[int, list[dict[str, str]]] = {row: [] for row in order.rows}
    for err in answer.get("errors", []):
        row, column = order.locate(err["field"])
        by_row.setdefault(row, []).append({"column": column, "reason": err["reason"]})
    rows = []
    for row, errors in by_row.items():
        entry: dict[str, Any] = {
            "row": row,
            "order_ref": order.external_id,
            "outcome": answer["outcome"],
            "order_id": answer["order_id"],
        }
        if errors:
            entry["errors"] = errors
        rows.append(entry)
    return rows


def cmd_status(args: argparse.Namespace) -> int:
    status = call_service("intake", "status", {"order_id": args.order_id})
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"order {status['order_id']}: {status['status']}")
    for key in ("channel", "external_id", "priority", "owner", "total", "currency"):
        if status.get(key) is not None:
            print(f"  {key:<12} {status[key]}")
    if status.get("priority_reason"):
        print(f"  {'why':<12} {status['priority_reason']}")
    if status.get("suspected_duplicate_of"):
        print(f"  {'REVIEW':<12} looks like {', '.join(status['suspected_duplicate_of'])}")
    for err in status.get("errors", []):
        print(f"  {err['field']}: {err['reason']}")
    print("  timeline:")
    for entry in status.get("timeline", []):
        detail = f"  {entry['detail']}" if entry.get("detail") else ""
        print(f"    {entry['at']}  {entry['what']:<22} by {entry['by']:<12}{detail}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    answer = call_service(
        "intake", "cancel", {"order_id": args.order_id, "reason": args.reason, "actor": args.actor}
    )
    if args.json:
        print(json.dumps(answer, indent=2))
    elif answer["outcome"] == "requested":
        print(f"cancellation of {answer['order_id']} requested; fulfillment decides")
        print(f"  (see `orderflow status {answer['order_id']}`)")
    else:
        print(f"{answer['order_id']}: {answer['reason']}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    payload: dict[str, Any] = {"limit": args.limit}
    for key in ("status", "channel", "since", "after"):
        if getattr(args, key):
            payload[key] = getattr(args, key)
    if args.flagged:
        payload["flagged"] = "true"
    page = call_service("intake", "list", payload)
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    print(f"{'ORDER':<36} {'STATUS':<11} {'CHANNEL':<12} {'EXTERNAL ID':<20} {'PRIORITY':<8} OWNER")
    for o in page["orders"]:
        flag = "  [review]" if o.get("flagged") else ""
        print(
            f"{o['order_id']:<36} {o['status']:<11} {o['channel']:<12} "
            f"{(o['external_id'] or '-'):<20} {o.get('priority') or '-':<8} "
            f"{o.get('owner') or '-'}{flag}"
        )
    if page.get("next"):
        print(f"more: --after {page['next']}")
    return 0


def cmd_rules(args: argparse.Namespace) -> int:
    rules = call_service("intake", "rules", {})
    if args.json:
        print(json.dumps(rules, indent=2))
        return 0
    for i, rule in enumerate(rules, 1):
        print(f"{i}. {rule['name']}: when {rule['when']} -> {rule['priority']}, {rule['owner']}")
    return 0


def cmd_customer_set(args: argparse.Namespace) -> int:
    row = call_service(
        "intake",
        "customer_set",
        {"customer": args.customer, "tier": args.tier, "account_manager": args.manager},
    )
    print(json.dumps(row, indent=2) if args.json else _customer_line(row))
    return 0


def cmd_customer_show(args: argparse.Namespace) -> int:
    row = call_service("intake", "customer_show", {"customer": args.customer})
    print(json.dumps(row, indent=2) if args.json else _customer_line(row))
    return 0


def _customer_line(row: dict[str, Any]) -> str:
    return (
        f"{row['customer']}: tier {row.get('tier') or '-'}, "
        f"account manager {row.get('account_manager') or '-'}"
    )
