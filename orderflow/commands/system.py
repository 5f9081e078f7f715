"""Running orderflow: the whole system (up), one service (run), a demo load."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orderflow import endpoints
from orderflow.commands import run_async
from shared import logs, subjects
from shared.runtime import ServiceRuntime
from shared.settings import ServiceSettings


def register(sub: Any) -> None:
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

    demo_p = sub.add_parser("demo", help="drive a demo load into a running system")
    demo_p.add_argument("--orders", type=int, default=200)
    demo_p.add_argument("--rate", type=float, default=50.0)
    demo_p.set_defaults(func=cmd_demo)


def cmd_up(args: argparse.Namespace) -> int:
    from orderflow.launcher import up

    return run_async(
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
    logs.configure(args.service, settings.log_level, settings.log_format)
    runtime = create_service(args.service)

    async def serve() -> int:
        await runtime.serve()
        return 0

    return run_async(serve())


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

    return run_async(go())
