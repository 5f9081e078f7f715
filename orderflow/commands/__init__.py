"""Sub-commands of ``orderflow``, one module per area; each has ``register(subparsers)``."""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from nats.aio.client import Client as NATS

from orderflow import endpoints
from shared import rpc

T = TypeVar("T")

EXIT_REFUSED = 1
EXIT_UNREACHABLE = 2


def run_async(coro: Awaitable[int]) -> int:
    """Run a command's coroutine on uvloop where available."""
    try:
        import uvloop

        return uvloop.run(coro)  # type: ignore[arg-type]
    except ImportError:
        return asyncio.run(coro)  # type: ignore[arg-type]


def with_nats(work: Callable[[NATS], Awaitable[T]]) -> T:
    """Connect to the running system, run ``work`` with the connection, close it, and return
    what ``work`` returned."""
    box: list[T] = []

    async def go() -> int:
        nc = await endpoints.connect()
        try:
            box.append(await work(nc))
        finally:
            await nc.close()
        return 0

    run_async(go())
    return box[0]


def print_result(as_json: bool, result: Any, render: Callable[[Any], str]) -> None:
    """A command's result: JSON with ``--json``, else the command's own text."""
    print(json.dumps(result, indent=2, default=str) if as_json else render(result))


async def _call(service: str, command: str, payload: dict[str, Any], timeout: float) -> Any:
    nc = await endpoints.connect()
    try:
        return await rpc.call(
            nc, service, command, payload, timeout=timeout, token=endpoints.operator_token()
        )
    finally:
        await nc.close()


def call_service(service: str, command: str, payload: dict[str, Any], timeout: float = 10.0) -> Any:
    """Send one command to a running service over NATS and return its result.

    Raises CommandRefused (printed as "refused: reason" by main) or StartupError (unreachable).
    """
    return asyncio.run(_call(service, command, payload, timeout))


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")
