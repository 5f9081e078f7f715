"""``orderflow report [--since --until] [--html out.html] [--json]``: the operations report
(orders, acceptance, lead times, SLA, top SKUs, stock cover) from the services' own figures."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from orderflow import report
from orderflow.commands import EXIT_REFUSED, add_json_flag, print_result, with_nats
from orderflow.report import html, text
from shared import audit, rpc


def register(sub: Any) -> None:
    rep = sub.add_parser(
        "report", help="orders, acceptance, lead times, SLA, top SKUs and stock cover"
    )
    rep.add_argument("--since", default=None, help="RFC 3339 time or epoch seconds")
    rep.add_argument("--until", default=None, help="RFC 3339 time or epoch seconds")
    rep.add_argument(
        "--html",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write an HTML page with charts",
    )
    rep.add_argument("--timeout", type=float, default=30.0, help="seconds per service")
    add_json_flag(rep)
    rep.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    try:
        since = audit.epoch_of(args.since, "since")
        until = audit.epoch_of(args.until, "until")
    except rpc.CommandRefused as exc:
        print(f"refused: {exc.reason}", file=sys.stderr)
        return EXIT_REFUSED
    found = with_nats(lambda nc: report.gather(nc, since, until, args.timeout))
    print_result(args.json, found, text.render)
    if args.html is not None:
        args.html.write_text(html.render(found), encoding="utf-8")
        print(f"wrote {args.html}", file=sys.stderr)
    return 0
