"""JetStream streams, declared as code and created idempotently at start-up.

Each producing service owns the stream of its events; SUBMISSIONS (owned by intake) holds what
channels publish, DEADLETTER what no consumer could process. A service makes sure every stream it
publishes to or consumes from exists, so the four can start in any order.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from shared import subjects
from shared.settings import ServiceSettings


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    max_age_s: float = 30 * 24 * 3600


SUBMISSIONS = StreamSpec("ORDERFLOW_SUBMISSIONS", (subjects.SUBMISSIONS_ALL,))
INTAKE = StreamSpec("ORDERFLOW_INTAKE", (subjects.all_events_of(subjects.INTAKE),))
INVENTORY = StreamSpec("ORDERFLOW_INVENTORY", (subjects.all_events_of(subjects.INVENTORY),))
FULFILLMENT = StreamSpec("ORDERFLOW_FULFILLMENT", (subjects.all_events_of(subjects.FULFILLMENT),))
NOTIFY = StreamSpec("ORDERFLOW_NOTIFY", (subjects.all_events_of(subjects.NOTIFY),))
DEAD_LETTERS = StreamSpec("ORDERFLOW_DEADLETTER", (subjects.DEAD_LETTERS_ALL,), 90 * 24 * 3600)


def stream_config(spec: StreamSpec, settings: ServiceSettings) -> StreamConfig:
    return StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        storage=StorageType.FILE,
        retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.OLD,
        max_age=spec.max_age_s,
        num_replicas=settings.stream_replicas,
        duplicate_window=settings.duplicate_window_s,
    )


async def ensure_streams(
    js: JetStreamContext,
    specs: tuple[StreamSpec, ...] | list[StreamSpec],
    settings: ServiceSettings,
) -> None:
    """Create the streams that do not exist; never rewrite one that does (an operator may have
    tuned it, and two service versions must not fight over its config)."""
    for spec in specs:
        try:
            await js.stream_info(spec.name)
        except NotFoundError:
            try:
                await js.add_stream(stream_config(spec, settings))
            except Exception:
                # Another service created it between our look and our add.
                await js.stream_info(spec.name)
