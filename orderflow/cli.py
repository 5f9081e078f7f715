"""The ``orderflow`` command: parses arguments, runs a sub-command, turns failures into plain
messages and exit codes (1 refused, 2 unreachable) instead of tracebacks."""

from __future__ import annotations

import argparse
import signal
import sys
import threading

import nats.errors

from orderflow import endpoints
from orderflow.commands import (
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    bench,
    contracts,
    migrate,
    monitoring,
    notifications,
    orders,
    reconcile,
    replay,
    report,
    shipments,
    stock,
    system,
    trace,
)
from shared import rpc
from shared.runtime import StartupError

# One module per area; a new area adds its module here.
COMMAND_MODULES = (
    system,
    orders,
    stock,
    bench,
    shipments,
    notifications,
    migrate,
    contracts,
    monitoring,
    trace,
    reconcile,
    replay,
    report,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orderflow",
        description=(
            "orderflow: an order backbone of four services over NATS JetStream. Commands that "
            "talk to a running system find it through $ORDERFLOW_HOME/endpoints.json (default "
            "./var/endpoints.json) or ORDERFLOW_NATS_URL."
        ),
    )
    parser.add_argument(
        "--token",
        default=None,
        help="operator token to act with (default: ORDERFLOW_TOKEN, else the admin token in "
        "$ORDERFLOW_HOME/credentials.json)",
    )
    sub = parser.add_subparsers(metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # `orderflow status X | head` should end quietly, as other command-line tools do. Only the
    # main thread may set a signal handler (tests call main() from worker threads).
    if hasattr(signal, "SIGPIPE") and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        return EXIT_UNREACHABLE
    # The token given with --token is for this command only (tests run many in one process).
    endpoints.use_token(args.token)
    try:
        return _run(args)
    finally:
        endpoints.use_token(None)


def _run(args: argparse.Namespace) -> int:
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
