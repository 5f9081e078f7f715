"""CPU per batch of a service's critical consumer, in process: the real consumer, handlers and
SQLite database, with NATS left out (messages are built in memory, acks go nowhere, nothing is
published). It isolates the cost of applying a batch — the part a change to the consume-commit
loop or a handler moves — from the noise of six processes sharing two cores.

    python -m orderflow.bench.batch intake --batch 1 --batches 2000
    python -m orderflow.bench.batch inventory --batch 10 --profile
    python -m orderflow.bench.batch notify --batch 100 --history 1000000

Prints CPU milliseconds per batch and microseconds per message (process CPU time, after a
warm-up of 50 batches); ``--profile`` adds the top of a cProfile (which inflates small calls).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import importlib
import os
import pstats
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from nats.aio.msg import Msg
from sqlalchemy import func, select

from orderflow import demo
from orderflow.bench import history
from orderflow.bench.load import BENCH_SKUS, restocks
from shared import subjects
from shared.consumer import BatchConsumer
from shared.contracts.envelope import new_envelope
from shared.contracts.intake import OrderAccepted, OrderSubmission
from shared.ids import uuid7
from shared.migrations import upgrade

CONSUMERS = {
    "intake": "intake-submissions",
    "inventory": "inventory-orders",
    "notify": "notify-intake",
}


class _Nowhere:
    """Stands in for the NATS client: acks are published to it and dropped."""

    async def publish(self, *args: Any, **kwargs: Any) -> None:
        return None


@dataclass
class Result:
    service: str
    batch: int
    batches: int
    cpu_s: float
    applied: int  # inbox rows afterwards: messages the consumer applied, warm-up included

    @property
    def ms_per_batch(self) -> float:
        return 1000 * self.cpu_s / self.batches

    @property
    def us_per_message(self) -> float:
        return 1e6 * self.cpu_s / (self.batches * self.batch)


class _Messages:
    """Deliveries as JetStream would make them: a submission for intake, else OrderAccepted."""

    def __init__(self, service: str, consumer: str) -> None:
        self.service, self.consumer = service, consumer
        self.rng = random.Random(1)
        self.seq = 0
        self.nc = _Nowhere()

    def batch(self, n: int) -> list[Msg]:
        return [self._one() for _ in range(n)]

    def _one(self) -> Msg:
        self.seq += 1
        doc = demo.valid_order(self.rng, "web", f"B{self.seq:08d}", skus=BENCH_SKUS)
        if self.service == "intake":
            stream, subject, data = "SUBMISSIONS", subjects.submission("web"), orjson.dumps(doc)
        else:
            sub = OrderSubmission.model_validate(doc)
            order_id = uuid7()
            env = new_envelope(
                OrderAccepted(
                    order_id=order_id,
                    channel="web",
                    external_id=sub.external_id,
                    customer=sub.customer,
                    lines=sub.lines,
                    currency=sub.currency,
                    total=sub.lines_total(),
                    shipping_address=sub.shipping_address,
                    priority="normal",
                    submitted_at=datetime.now(UTC),
                ),
                correlation_id=order_id,
            )
            stream, subject, data = "INTAKE", env.subject, env.encode()
        reply = f"$JS.ACK.{stream}.{self.consumer}.1.{self.seq}.{self.seq}.{time.time_ns()}.0"
        return Msg(_client=self.nc, subject=subject, reply=reply, data=data)  # type: ignore[arg-type]


async def measure(
    service: str,
    batch: int,
    batches: int,
    *,
    profile: bool = False,
    warmup: int = 50,
    history_orders: int = 0,
) -> Result:
    home = tempfile.mkdtemp(prefix="orderflow-batch-")
    # The service reads its settings from the environment: its home only while it is built.
    before = os.environ.get("ORDERFLOW_HOME")
    os.environ["ORDERFLOW_HOME"] = home
    try:
        rt = importlib.import_module(f"services.{service}.app").create_service()
    finally:
        if before is None:
            del os.environ["ORDERFLOW_HOME"]
        else:
            os.environ["ORDERFLOW_HOME"] = before
    if rt.migrations is not None:
        await upgrade(rt.db, rt.name, rt.migrations)
    else:
        await rt.db.create_schema()
    if history_orders:
        # The bench's growth run's history, stored before the first batch (the pool's
        # connections are idle: the prefill's own connection is the only writer meanwhile).
        history.prefill_service(service, Path(home) / f"{service}.db", history_orders)
    try:
        if service == "inventory":
            for command in restocks():
                await rt.rpc.commands["restock"](command)
        spec = next(s for s in rt.consumer_specs if s.name == CONSUMERS[service])
        consumer = BatchConsumer(spec, rt.name, rt.db, rt.inbox, rt.outbox, rt.metrics, rt.settings)
        messages = _Messages(service, spec.name)
        for _ in range(warmup):
            await consumer.process(messages.batch(batch))
        work = [messages.batch(batch) for _ in range(batches)]
        profiler = cProfile.Profile(time.process_time) if profile else None
        started = time.process_time()
        if profiler:
            profiler.enable()
        for msgs in work:
            await consumer.process(msgs)
        if profiler:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
        took = time.process_time() - started
        async with rt.db.reading() as conn:
            applied = (await conn.execute(select(func.count()).select_from(rt.inbox))).scalar()
        return Result(service, batch, batches, took, int(applied or 0))
    finally:
        await rt.db.close()
        shutil.rmtree(home, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m orderflow.bench.batch", description=__doc__)
    parser.add_argument("service", choices=sorted(CONSUMERS))
    parser.add_argument("--batch", type=int, default=10, help="messages per batch")
    parser.add_argument("--batches", type=int, default=300, help="batches measured")
    parser.add_argument("--profile", action="store_true", help="print a cProfile as well")
    parser.add_argument(
        "--history", type=int, default=0, help="orders of history stored first (growth)"
    )
    args = parser.parse_args()
    result = asyncio.run(
        measure(
            args.service,
            args.batch,
            args.batches,
            profile=args.profile,
            history_orders=args.history,
        )
    )
    print(
        f"{result.service} {CONSUMERS[result.service]}: batch of {result.batch}: "
        f"{result.ms_per_batch:.3f} ms CPU per batch, {result.us_per_message:.0f} µs per message"
    )


if __name__ == "__main__":
    main()
