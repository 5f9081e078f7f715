"""``orderflow bench``: throughput and latency against the ceiling of this machine."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    bench = sub.add_parser(
        "bench", help="measure orders/s end to end, latency per stage, memory and growth"
    )
    bench.add_argument(
        "--json",
        dest="json_path",
        type=Path,
        default=None,
        help="write every figure to this file (and a PNG beside it)",
    )
    bench.add_argument("--png", type=Path, default=None, help="latency-vs-load plot (PNG)")
    bench.add_argument(
        "--rates",
        default="500,1000,2000",
        help="fixed offered rates, orders/s (default 500,1000,2000)",
    )
    bench.add_argument("--rate-seconds", type=float, default=6.0, help="seconds per fixed rate")
    bench.add_argument("--orders", type=int, default=20_000, help="orders in the maximum run")
    bench.add_argument("--ceiling-messages", type=int, default=40_000)
    bench.add_argument(
        "--history",
        type=int,
        default=1_000_000,
        help="orders of history to store before the growth run (0 skips it)",
    )
    bench.add_argument("--home", type=Path, default=None, help="data folder (default: a temp dir)")
    bench.add_argument(
        "--smoke",
        action="store_true",
        help="small and quick: checks correctness, not speed (used in CI)",
    )
    bench.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from orderflow.bench.run import BenchConfig, main_sync

    cfg = BenchConfig(
        rates=tuple(float(r) for r in args.rates.split(",") if r),
        rate_seconds=args.rate_seconds,
        max_orders=args.orders,
        ceiling_messages=args.ceiling_messages,
        history_orders=args.history,
        home=args.home,
    )
    if args.smoke:
        cfg = BenchConfig(
            rates=(200.0,),
            rate_seconds=2.0,
            max_orders=500,
            ceiling_messages=2000,
            history_orders=2000,
            home=args.home,
            smoke=True,
        )
    png = args.png or (args.json_path.with_suffix(".png") if args.json_path else None)
    return main_sync(cfg, args.json_path, png)
