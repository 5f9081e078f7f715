"""The AsyncAPI 3.0 document of every event, generated from the contracts, and the check that a
change to the contracts does not break a consumer still on the previous version.

``docs/asyncapi.json`` is this document, committed (a test fails when it is stale);
``docs/asyncapi.baseline.json`` is the document of the contracts every running service is known
to read — the previous release. Against the baseline, within one ``schema_version`` an event may
only gain optional fields: removing or retyping a field, adding a required one, or moving the
event to another subject or stream is a break. A breaking change to a payload is made by raising
the event's ``schema_version`` with an upcaster from the baseline's version (consumers are rolled
out before the producer; README, "Running in production").
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from pydantic.json_schema import models_json_schema

from shared import streams, subjects
from shared.contracts.envelope import REGISTRY, Event
from shared.contracts.intake import OrderSubmission

ASYNCAPI_VERSION = "3.0.0"
SCHEMAS = "#/components/schemas/"
# What says nothing about the shape of the data: ignored when comparing two versions.
WORDING = frozenset({"description", "title", "examples", "default"})
STREAM_OF = {
    spec.subjects[0]: spec.name
    for spec in (streams.INTAKE, streams.INVENTORY, streams.FULFILLMENT, streams.NOTIFY)
}

ENVELOPE_FIELDS: dict[str, dict[str, Any]] = {
    "event_id": {"type": "string", "format": "uuid", "description": "UUIDv7; Nats-Msg-Id"},
    "occurred_at": {"type": "string", "format": "date-time"},
    "producer": {"type": "string", "description": "The service that emitted the event"},
    "key": {"type": "string", "description": "The order id, or the SKU; ends the subject"},
    "correlation_id": {"type": "string", "description": "The order the event belongs to"},
    "causation_id": {
        "anyOf": [{"type": "string"}, {"type": "null"}],
        "description": "The event that caused this one",
    },
}
# causation_id is always written (null for an event no other caused).


def document(registry: Mapping[str, type[Event]] | None = None) -> dict[str, Any]:
    """The AsyncAPI document of ``registry`` (default: every registered event)."""
    events = dict(sorted((registry or REGISTRY).items()))
    _, defs = models_json_schema(
        [(cls, "serialization") for cls in events.values()] + [(OrderSubmission, "validation")],
        ref_template=SCHEMAS + "{model}",
    )
    schemas: dict[str, Any] = dict(sorted(defs.get("$defs", {}).items()))
    channels: dict[str, Any] = {
        "submissions": {
            "address": subjects.submission("{channel}"),
            "title": "Orders as channels submit them",
            "description": "Captured by the ORDERFLOW_SUBMISSIONS stream; intake consumes it.",
            "parameters": {"channel": {"description": "The submitting channel's name"}},
            "messages": {"OrderSubmission": {"$ref": "#/components/messages/OrderSubmission"}},
            "x-stream": streams.SUBMISSIONS.name,
        }
    }
    operations: dict[str, Any] = {
        "submitOrder": {
            "action": "send",
            "channel": {"$ref": "#/channels/submissions"},
            "summary": "A channel submits an order",
        }
    }
    messages: dict[str, Any] = {
        "OrderSubmission": {
            "name": "OrderSubmission",
            "contentType": "application/json",
            "payload": {"$ref": SCHEMAS + "OrderSubmission"},
        }
    }
    for event_type, cls in events.items():
        name = cls.__name__
        address = subjects.event(cls.producer, event_type, "{key}")
        channels[event_type] = {
            "address": address,
            "title": name,
            "parameters": {"key": {"description": "The order id, or the SKU of a stock event"}},
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "x-stream": STREAM_OF[subjects.all_events_of(cls.producer)],
        }
        operations[f"emit_{event_type}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{event_type}"},
            "summary": f"{cls.producer} emits {name}",
            "x-producer": cls.producer,
        }
        messages[name] = {
            "name": event_type,
            "title": name,
            "summary": (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " "),
            "contentType": "application/json",
            "headers": {
                "type": "object",
                "properties": {"Nats-Msg-Id": {"type": "string", "description": "= event_id"}},
            },
            "payload": {
                "type": "object",
                "required": [*ENVELOPE_FIELDS, "type", "schema_version", "data"],
                "properties": {
                    **ENVELOPE_FIELDS,
                    "type": {"const": event_type},
                    "schema_version": {"const": cls.schema_version},
                    "data": {"$ref": SCHEMAS + name},
                },
            },
            "x-schema-version": cls.schema_version,
            "x-upcasts-from": sorted(cls.upcasters),
        }
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "orderflow events",
            "version": "1",
            "description": "Every event the four services exchange over NATS JetStream, "
            "generated from shared/contracts by `orderflow asyncapi`. Do not edit by hand.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {"host": "127.0.0.1:4222", "protocol": "nats", "description": "JetStream"}
        },
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


# --- compatibility ------------------------------------------------------------------------------


def breaking_changes(
    baseline: Mapping[str, Any],
    current: Mapping[str, Any],
    upcasters: Callable[[str], Mapping[int, Any]] | None = None,
) -> list[str]:
    """What in ``current`` would break a consumer built on ``baseline``, one sentence each."""
    upcasters = upcasters or (lambda t: REGISTRY[t].upcasters if t in REGISTRY else {})
    old_msgs, new_msgs = _messages(baseline), _messages(current)
    problems: list[str] = []
    for event_type, (old_channel, old_msg) in old_msgs.items():
        if event_type not in new_msgs:
            problems.append(f"{event_type}: removed (its consumers would wait for it forever)")
            continue
        new_channel, new_msg = new_msgs[event_type]
        for key, what in (("address", "subject"), ("x-stream", "stream")):
            if old_channel.get(key) != new_channel.get(key):
                problems.append(
                    f"{event_type}: {what} renamed from {old_channel.get(key)!r} "
                    f"to {new_channel.get(key)!r}"
                )
        old_v, new_v = old_msg["x-schema-version"], new_msg["x-schema-version"]
        if new_v < old_v:
            problems.append(f"{event_type}: schema_version went back from {old_v} to {new_v}")
            continue
        if new_v > old_v:
            chain = set(range(old_v, new_v))
            missing = sorted(chain - set(upcasters(event_type)))
            if missing:
                problems.append(
                    f"{event_type}: schema_version {old_v} -> {new_v} without an upcaster "
                    f"from v{missing[0]}"
                )
            continue  # the upcasters carry the old payloads; the shape may change
        old_data = _resolve(old_msg["payload"]["properties"]["data"], baseline)
        new_data = _resolve(new_msg["payload"]["properties"]["data"], current)
        problems.extend(
            f"{event_type} v{new_v}: {p}"
            for p in _compare(old_data, new_data, "data", baseline, current)
        )
    return problems


def _messages(doc: Mapping[str, Any]) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    found = {}
    for channel in doc.get("channels", {}).values():
        for ref in channel.get("messages", {}).values():
            message = doc["components"]["messages"][ref["$ref"].rsplit("/", 1)[-1]]
            if "x-schema-version" in message:
                found[message["name"]] = (channel, message)
    return found


def _resolve(schema: Any, doc: Mapping[str, Any]) -> Any:
    """``schema`` with its ``$ref`` followed (one level) and wording left out."""
    while isinstance(schema, dict) and "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].removeprefix(SCHEMAS)]
    if isinstance(schema, dict):
        return {k: v for k, v in schema.items() if k not in WORDING}
    return schema


def _deep(schema: Any, doc: Mapping[str, Any]) -> Any:
    """``schema`` with every ``$ref`` inlined and wording left out, to compare two types."""
    schema = _resolve(schema, doc)
    if isinstance(schema, dict):
        return {k: _deep(v, doc) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_deep(v, doc) for v in schema]
    return copy.deepcopy(schema)


def _compare(
    old: Any, new: Any, path: str, old_doc: Mapping[str, Any], new_doc: Mapping[str, Any]
) -> list[str]:
    old, new = _resolve(old, old_doc), _resolve(new, new_doc)
    if isinstance(old, dict) and isinstance(new, dict) and "properties" in old:
        if "properties" not in new:
            return [f"field {path} retyped (no longer an object)"]
        problems = []
        old_props, new_props = old["properties"], new["properties"]
        old_req, new_req = set(old.get("required", ())), set(new.get("required", ()))
        for name in old_props:
            where = f"{path}.{name}"
            if name not in new_props:
                problems.append(f"field {where} removed")
                continue
            if name in new_req and name not in old_req:
                problems.append(f"field {where} became required")
            problems.extend(_compare(old_props[name], new_props[name], where, old_doc, new_doc))
        problems.extend(
            f"new required field {path}.{name}"
            for name in new_props
            if name not in old_props and name in new_req
        )
        return problems
    if isinstance(old, dict) and isinstance(new, dict) and "anyOf" in old and "anyOf" in new:
        # An optional value (X | None): compare the alternatives one by one.
        if len(old["anyOf"]) != len(new["anyOf"]):
            return [f"field {path} retyped"]
        return [
            p
            for o, n in zip(old["anyOf"], new["anyOf"], strict=True)
            for p in _compare(o, n, path, old_doc, new_doc)
        ]
    if isinstance(old, dict) and isinstance(new, dict) and old.get("type") == "array":
        if new.get("type") != "array":
            return [f"field {path} retyped from a list"]
        rest_old = {k: v for k, v in old.items() if k != "items"}
        rest_new = {k: v for k, v in new.items() if k != "items"}
        problems = [] if rest_old == rest_new else [f"field {path} retyped (list limits)"]
        return problems + _compare(
            old.get("items", {}), new.get("items", {}), f"{path}[]", old_doc, new_doc
        )
    if _deep(old, old_doc) != _deep(new, new_doc):
        return [f"field {path} retyped"]
    return []
