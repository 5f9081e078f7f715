"""The ceiling: the least each hop must do, as fast as this machine can do it.

Four processes in a chain. Each consumes a batch from JetStream (push consumer, explicit acks),
inserts one row per message into its own SQLite database (WAL) in ONE transaction, publishes each
message to the next hop with async publishes and waits for their acks, then acks its inputs.
uvloop, raw sqlite3, no validation: this is what orderflow is measured against.

Run as ``python -m orderflow.bench.ceiling <hop> <nats_url> <db_path>``.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import time
from typing import Any

import nats
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig

HOPS = 4
BATCH_MAX = 200


def stream_name(hop: int) -> str:
    return f"CEILING_{hop}"


def subject(hop: int) -> str:
    """What hop ``hop`` consumes; hop HOPS + 1 is the end of the chain."""
    return f"ceiling.h{hop}"


async def create_streams(url: str, duplicate_window_s: float = 300.0) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    for hop in range(1, HOPS + 2):
        await js.add_stream(
            StreamConfig(
                name=stream_name(hop),
                subjects=[subject(hop)],
                storage=StorageType.FILE,
                num_replicas=1,
                duplicate_window=duplicate_window_s,
            )
        )
    await nc.close()


async def run_hop(hop: int, url: str, db_path: str) -> None:
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS seen (id TEXT PRIMARY KEY, payload BLOB, at REAL)")
    nc = await nats.connect(url, pending_size=64 * 1024 * 1024)
    js = nc.jetstream(publish_async_max_pending=20_000)
    pending: list[Msg] = []
    wake = asyncio.Event()

    async def on_msg(msg: Msg) -> None:
        pending.append(msg)
        wake.set()

    durable = f"ceiling-hop-{hop}"
    await js.subscribe(
        subject(hop),
        queue=durable,
        durable=durable,
        stream=stream_name(hop),
        cb=on_msg,
        manual_ack=True,
        pending_msgs_limit=200_000,
        pending_bytes_limit=512 * 1024 * 1024,
        config=ConsumerConfig(
            durable_name=durable,
            deliver_group=durable,
            ack_policy=AckPolicy.EXPLICIT,
            max_ack_pending=20_000,
            ack_wait=30,
        ),
    )
    out = subject(hop + 1)
    inflight: set[asyncio.Task[None]] = set()

    async def forward(batch: list[Msg], futures: list[asyncio.Future[Any]]) -> None:
        # Inputs are acked only once the next hop's stream has stored every output.
        await asyncio.gather(*futures)
        for m in batch:
            await m.ack()

    while True:
        await wake.wait()
        wake.clear()
        while pending:
            batch = pending[:BATCH_MAX]
            del pending[:BATCH_MAX]
            now = time.time()
            rows = [
                (m.headers["Nats-Msg-Id"] if m.headers else str(m.reply), m.data, now)
                for m in batch
            ]
            db.execute("BEGIN")
            db.executemany("INSERT OR IGNORE INTO seen VALUES (?, ?, ?)", rows)
            db.execute("COMMIT")
            futures = [
                await js.publish_async(out, m.data, headers={"Nats-Msg-Id": r[0]})
                for m, r in zip(batch, rows, strict=True)
            ]
            # Pipelined: the next batch is applied while this one's publish acks come back.
            task = asyncio.create_task(forward(batch, futures))
            inflight.add(task)
            task.add_done_callback(inflight.discard)


def main() -> None:
    hop, url, db_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    try:
        import uvloop

        uvloop.run(run_hop(hop, url, db_path))
    except ImportError:
        asyncio.run(run_hop(hop, url, db_path))


if __name__ == "__main__":
    main()
