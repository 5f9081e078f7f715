"""Running a service for real inside a test, and reading what reached the streams."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError

from shared.contracts.envelope import Envelope, decode_envelope
from shared.runtime import ServiceRuntime


@asynccontextmanager
async def running(rt: ServiceRuntime) -> AsyncIterator[ServiceRuntime]:
    await rt.start()
    try:
        yield rt
    finally:
        await rt.stop()


@asynccontextmanager
async def nats_client(url: str) -> AsyncIterator[tuple[NATS, JetStreamContext]]:
    nc = await nats.connect(url, name="orderflow-tests")
    try:
        yield nc, nc.jetstream()
    finally:
        await nc.drain()


async def stream_messages(js: JetStreamContext, stream: str) -> list[RawStreamMsg]:
    """Every message a stream holds, in stream order (empty if the stream does not exist)."""
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        return []
    state = info.state
    if not state.messages:
        return []
    found = []
    for seq in range(state.first_seq, state.last_seq + 1):
        try:
            found.append(await js.get_msg(stream, seq))
        except NotFoundError:
            continue
    return found


async def stream_envelopes(js: JetStreamContext, stream: str) -> list[Envelope]:
    return [decode_envelope(m.data or b"") for m in await stream_messages(js, stream)]
