"""The ``orderflow`` command."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import nats.errors

from orderflow import endpoints
from shared import rpc, subjects
from shared.runtime import ServiceRuntime, StartupError
from shared.settings import ServiceSettings

EXIT_REFUSED = 1
EXIT_UNREACHABLE = 2


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return EXIT_UNREACHABLE
    try:
        result: int = args.func(args)
        return result
    except StartupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except rpc.CommandRefused as exc:
        print(f"refused: {exc.reason}", file=sys.stderr)
        for err in exc.errors:
            print(f"  {err.get('field')}: {err.get('reason')}", file=sys.stderr)
        return EXIT_REFUSED
    except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
        print(
            f"error: the service did not answer ({exc.__class__.__name__}); is it running?",
            file=sys.stderr,
        )
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="orderflow",
        description=(
            "orderflow: an order backbone of four services over NATS JetStream. Commands that talk "
            "to a running system find it through $ORDERFLOW_HOME/endpoints.json (default "
            "./var/endpoints.json) or ORDERFLOW_NATS_URL."
        ),
    )
    sub = p.add_subparsers(metavar="COMMAND")

    up = sub.add_parser(
        "up", help="start nats-server and the four services, seed stock, drive a demo load"
    )
    up.add_argument(
        "--home", type=Path, default=None, help="data folder (default $ORDERFLOW_HOME or ./var)"
    )
    up.add_argument(
        "--no-simulator", action="store_true", help="do not run the warehouse simulator"
    )
    up.add_argument("--no-demo", action="store_true", help="do not drive a demo load")
    up.add_argument("--orders", type=int, default=400, help="demo orders (default 400)")
    up.add_argument("--rate", type=float, default=40.0, help="demo orders per second (default 40)")
    up.add_argument(
        "--for",
        dest="run_for",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop by itself after this long",
    )
    up.set_defaults(func=cmd_up)

    run = sub.add_parser("run", help="run one service against an existing NATS and database")
    run.add_argument("service", choices=subjects.SERVICES)
    run.set_defaults(func=cmd_run)

    submit = sub.add_parser("submit", help="submit one order (JSON) and print its answer")
    submit.add_argument("file", nargs="?", default="-", help="JSON file, or - for stdin")
    submit.add_argument(
        "--channel", default=None, help="channel (default: the order's own, else web)"
    )
    submit.add_argument("--json", action="store_true", help="machine-readable output")
    submit.set_defaults(func=cmd_submit)

    status = sub.add_parser("status", help="show an order's current status")
    status.add_argument("order_id")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    stock = sub.add_parser("stock", help="stock levels and changes")
    stock_sub = stock.add_subparsers(metavar="ACTION")
    restock = stock_sub.add_parser("restock", help="add units of a SKU to a warehouse")
    restock.add_argument("sku")
    restock.add_argument("quantity", type=int)
    restock.add_argument("--warehouse", default="WH-1")
    restock.add_argument("--reason", default="restock")
    restock.add_argument("--actor", default="cli")
    restock.add_argument("--json", action="store_true")
    restock.set_defaults(func=cmd_restock)
    show = stock_sub.add_parser("show", help="stock per SKU and warehouse")
    show.add_argument("--sku", default=None)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_stock_show)

    demo_p = sub.add_parser("demo", help="drive a demo load into a running system")
    demo_p.add_argument("--orders", type=int, default=200)
    demo_p.add_argument("--rate", type=float, default=50.0)
    demo_p.set_defaults(func=cmd_demo)
    return p


def _asyncio_run(coro: Awaitable[int]) -> int:
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]


def cmd_up(args: argparse.Namespace) -> int:
    from orderflow.launcher import up

    return _asyncio_run(
        up(
            args.home or endpoints.home(),
            simulator=not args.no_simulator,
            demo_orders=0 if args.no_demo else args.orders,
            demo_rate=args.rate,
            run_for=args.run_for,
        )
    )


def create_service(name: str, settings: ServiceSettings | None = None) -> ServiceRuntime:
    module = importlib.import_module(f"services.{name}.app")
    factory: Callable[[ServiceSettings | None], ServiceRuntime] = module.create_service
    return factory(settings)


def cmd_run(args: argparse.Namespace) -> int:
    settings = ServiceSettings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format=f"%(asctime)s {args.service} %(levelname)s %(name)s: %(message)s",
    )
    # Per-message logging from the NATS client would cost a third of the throughput.
    logging.getLogger("nats").setLevel(logging.WARNING)
    runtime = create_service(args.service)

    async def serve() -> int:
        await runtime.serve()
        return 0

    return _asyncio_run(serve())


async def _call(service: str, command: str, payload: dict[str, Any]) -> Any:
    nc = await endpoints.connect()
    try:
        return await rpc.call(nc, service, command, payload)
    finally:
        await nc.close()


def cmd_submit(args: argparse.Namespace) -> int:
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    try:
        order = json.loads(text)
    except json.JSONDecodeError as exc:
        raise rpc.CommandRefused(f"the order is not valid JSON: {exc}") from exc
    if not isinstance(order, dict):
        raise rpc.CommandRefused("the order must be a JSON object")
    channel = args.channel or order.get("channel") or "web"
    answer = asyncio.run(_call("intake", "submit", {"channel": channel, "order": order}))
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
    status = asyncio.run(_call("intake", "status", {"order_id": args.order_id}))
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


def cmd_restock(args: argparse.Namespace) -> int:
    row = asyncio.run(
        _call(
            "inventory",
            "restock",
            {
                "sku": args.sku,
                "quantity": args.quantity,
                "warehouse": args.warehouse,
                "reason": args.reason,
                "actor": args.actor,
            },
        )
    )
    if args.json:
        print(json.dumps(row, indent=2))
    else:
        print(
            f"{row['sku']} at {row['warehouse']}: on hand {row['on_hand']}, "
            f"reserved {row['reserved']}, available {row['available']}"
        )
    return 0


def cmd_stock_show(args: argparse.Namespace) -> int:
    payload = {"sku": args.sku} if args.sku else {}
    rows = asyncio.run(_call("inventory", "stock", payload))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{'SKU':<12} {'WAREHOUSE':<10} {'ON HAND':>8} {'RESERVED':>9} {'AVAILABLE':>10} {'SHIPPED':>8}"
    )
    for r in rows:
        print(
            f"{r['sku']:<12} {r['warehouse']:<10} {r['on_hand']:>8} {r['reserved']:>9} "
            f"{r['available']:>10} {r.get('shipped', 0):>8}"
        )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from orderflow import demo

    async def go() -> int:
        nc = await endpoints.connect()
        try:
            items = demo.plan(args.orders)
            took = await demo.publish(nc.jetstream(), items, args.rate)
            print(f"submitted {len(items)} orders in {took:.1f}s")
        finally:
            await nc.close()
        return 0

    return asyncio.run(go())
