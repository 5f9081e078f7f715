"""The envelope every event travels in, and the registry of event types.

Wire format (JSON)::

    {"event_id": UUIDv7, "type": "order_accepted", "schema_version": 1,
     "occurred_at": RFC 3339, "producer": "intake", "key": order id or SKU,
     "correlation_id": order id, "causation_id": event id or null, "data": {...}}

Envelopes are plain dicts encoded with orjson: the hot path builds and reads thousands a second,
and only ``data`` needs pydantic's validation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

import orjson

from shared import subjects
from shared.contracts.common import Contract
from shared.ids import uuid7


class Event(Contract):
    """Base of every event payload; subclasses name their type, version and producer."""

    event_type: ClassVar[str]
    schema_version: ClassVar[int] = 1
    producer: ClassVar[str]
    # Old payload versions are upcast to the current one before validation: {from_version: fn}.
    upcasters: ClassVar[dict[int, Callable[[dict[str, Any]], dict[str, Any]]]] = {}

    def key(self) -> str:
        """The id this event concerns; ends its subject."""
        raise NotImplementedError


REGISTRY: dict[str, type[Event]] = {}
E = TypeVar("E", bound=type[Event])


def register(cls: E) -> E:
    if cls.event_type in REGISTRY:
        raise ValueError(f"event type registered twice: {cls.event_type}")
    REGISTRY[cls.event_type] = cls
    return cls


class UnknownEvent(ValueError):
    """An envelope this build cannot read: unknown type or a newer schema version."""


@dataclass(frozen=True, slots=True)
class EventHeader:
    """An event's envelope without its payload: what a consumer needs that reads only which
    event, about what and when (a status view), and so skips validating the payload."""

    event_id: str
    type: str
    schema_version: int
    occurred_at: str
    producer: str
    key: str
    correlation_id: str
    causation_id: str | None


@dataclass(frozen=True, slots=True)
class Envelope(EventHeader):
    data: Event

    @property
    def subject(self) -> str:
        return subjects.event(self.producer, self.type, self.key)

    def encode(self) -> bytes:
        # The header is small and built by orjson; the payload is serialised by pydantic's own
        # JSON writer straight to bytes (half the cost of model_dump() + orjson.dumps()).
        header = orjson.dumps(
            {
                "event_id": self.event_id,
                "type": self.type,
                "schema_version": self.schema_version,
                "occurred_at": self.occurred_at,
                "producer": self.producer,
                "key": self.key,
                "correlation_id": self.correlation_id,
                "causation_id": self.causation_id,
            }
        )
        return (
            header[:-1] + b',"data":' + self.data.__pydantic_serializer__.to_json(self.data) + b"}"
        )


def new_envelope(
    data: Event, *, correlation_id: str | None = None, causation_id: str | None = None
) -> Envelope:
    key = data.key()
    return Envelope(
        event_id=uuid7(),
        type=data.event_type,
        schema_version=data.schema_version,
        occurred_at=datetime.now(UTC).isoformat(),
        producer=data.producer,
        key=key,
        correlation_id=correlation_id or key,
        causation_id=causation_id,
        data=data,
    )


def decode_envelope(raw: bytes) -> Envelope:
    """Parse and validate an envelope; raises UnknownEvent or pydantic.ValidationError."""
    doc, cls = _header_doc(raw)
    version, payload = doc["schema_version"], doc.get("data")
    if not isinstance(payload, dict):
        raise UnknownEvent("envelope without data")
    while version < cls.schema_version:
        upcast = cls.upcasters.get(version)
        if upcast is None:
            raise UnknownEvent(f"no upcaster for {cls.event_type} v{version}")
        payload = upcast(payload)
        version += 1
    return Envelope(**_header_fields(doc, cls), data=cls.model_validate(payload))


def decode_header(raw: bytes) -> EventHeader:
    """Parse an envelope's header only: the type must be known and its version readable by this
    build, but the payload is not validated (the caller does not read it)."""
    doc, cls = _header_doc(raw)
    if doc["schema_version"] < cls.schema_version and not _upcastable(cls, doc["schema_version"]):
        raise UnknownEvent(f"no upcaster for {cls.event_type} v{doc['schema_version']}")
    return EventHeader(**_header_fields(doc, cls))


def _header_fields(doc: dict[str, Any], cls: type[Event]) -> dict[str, Any]:
    """An envelope's header as this build reads it (its type's current version)."""
    return {
        "event_id": str(doc["event_id"]),
        "type": cls.event_type,
        "schema_version": cls.schema_version,
        "occurred_at": str(doc["occurred_at"]),
        "producer": str(doc["producer"]),
        "key": str(doc["key"]),
        "correlation_id": str(doc["correlation_id"]),
        "causation_id": doc.get("causation_id"),
    }


def _header_doc(raw: bytes) -> tuple[dict[str, Any], type[Event]]:
    doc = orjson.loads(raw)
    if not isinstance(doc, dict):
        raise UnknownEvent("envelope is not a JSON object")
    cls = REGISTRY.get(doc.get("type", ""))
    if cls is None:
        raise UnknownEvent(f"unknown event type {doc.get('type')!r}")
    version = doc.get("schema_version")
    if not isinstance(version, int):
        raise UnknownEvent("envelope without schema_version")
    if version > cls.schema_version:
        raise UnknownEvent(
            f"{cls.event_type} v{version} is newer than this build reads (v{cls.schema_version})"
        )
    missing = [
        f for f in ("event_id", "occurred_at", "producer", "key", "correlation_id") if f not in doc
    ]
    if missing:
        raise UnknownEvent(f"envelope without {', '.join(missing)}")
    return doc, cls


def _upcastable(cls: type[Event], version: int) -> bool:
    return all(v in cls.upcasters for v in range(version, cls.schema_version))
