"""``orderflow asyncapi``: the AsyncAPI document of every event, generated from the contracts;
``--check`` says whether the committed document is current and whether the contracts still
serve a consumer on the previous release (the baseline)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from shared.contracts.asyncapi import breaking_changes, document

DOCUMENT = Path("docs/asyncapi.json")
BASELINE = Path("docs/asyncapi.baseline.json")


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "asyncapi", help="the AsyncAPI document of every event; check contract compatibility"
    )
    parser.add_argument("--write", action="store_true", help=f"write it to --out ({DOCUMENT})")
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if --out is stale or a change breaks a consumer on the baseline",
    )
    parser.add_argument(
        "--release",
        action="store_true",
        help="make the current contracts the baseline (once every service runs them)",
    )
    parser.add_argument("--out", type=Path, default=DOCUMENT)
    parser.add_argument("--baseline", type=Path, default=BASELINE)
    parser.set_defaults(func=cmd_asyncapi)


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"


def cmd_asyncapi(args: argparse.Namespace) -> int:
    text = render(document())
    if args.write or args.release:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")
    if args.release:
        args.baseline.write_text(text)
        print(f"wrote {args.baseline}: consumers are now checked against these contracts")
    if args.check:
        problems = []
        if not args.out.exists() or args.out.read_text() != text:
            problems.append(f"{args.out} is stale: run `orderflow asyncapi --write`")
        if args.baseline.exists():
            problems.extend(breaking_changes(json.loads(args.baseline.read_text()), document()))
        else:
            problems.append(f"no baseline at {args.baseline}")
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        if problems:
            print("refused: the contracts are not ready to roll out", file=sys.stderr)
            return 1
        print(f"{args.out} is current; no change breaks a consumer on {args.baseline}")
    if not (args.write or args.release or args.check):
        sys.stdout.write(text)
    return 0
