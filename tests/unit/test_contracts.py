"""The envelope on the wire: what one service writes, another reads back unchanged."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar

import orjson
import pytest

from shared import subjects
from shared.contracts.common import Address, Customer, OrderLine
from shared.contracts.envelope import (
    REGISTRY,
    Event,
    UnknownEvent,
    decode_envelope,
    new_envelope,
)
from shared.contracts.intake import OrderAccepted
from shared.ids import uuid7


def accepted_order(**changes: Any) -> OrderAccepted:
    values: dict[str, Any] = {
        "order_id": uuid7(),
        "channel": "web",
        "external_id": "web-42",
        "customer": Customer(name="Mei Lin", email="mei.lin@example.com"),
        "lines": [
            OrderLine(sku="TEA-001", quantity=2, unit_price=Decimal("12.50")),
            OrderLine(sku="CUP-002", quantity=3, unit_price=Decimal("0.10")),
        ],
        "currency": "CNY",
        "total": Decimal("25.30"),
        "shipping_address": Address(
            name="Mei Lin",
            line1="18 Longjing Road",
            city="Hangzhou",
            postal_code="310000",
            country="CN",
        ),
        "priority": "high",
        "submitted_at": datetime(2026, 3, 1, 8, 30, tzinfo=UTC),
    }
    values.update(changes)
    return OrderAccepted(**values)


def test_an_envelope_survives_the_wire_with_its_ids_and_data() -> None:
    cause = uuid7()
    order = accepted_order()
    env = new_envelope(order, correlation_id="corr-1", causation_id=cause)
    back = decode_envelope(env.encode())
    assert back == env
    assert back.event_id == env.event_id
    assert back.correlation_id == "corr-1"
    assert back.causation_id == cause
    assert back.key == order.order_id
    assert back.subject == subjects.event(subjects.INTAKE, "order_accepted", back.key)
    assert isinstance(back.data, OrderAccepted)
    assert back.data.total == Decimal("25.30")


def test_an_envelope_correlates_with_its_key_by_default() -> None:
    env = new_envelope(accepted_order())
    assert env.correlation_id == env.key
    assert env.causation_id is None
    assert env.producer == "intake"
    assert env.schema_version == OrderAccepted.schema_version


def test_money_travels_as_a_decimal_string_never_a_float() -> None:
    wire = orjson.loads(new_envelope(accepted_order()).encode())
    data = wire["data"]
    assert data["total"] == "25.30"
    assert [line["unit_price"] for line in data["lines"]] == ["12.50", "0.10"]
    assert b"25.3," not in new_envelope(accepted_order()).encode()


def _wire(event_type: str, version: int, data: dict[str, Any]) -> bytes:
    return orjson.dumps(
        {
            "event_id": uuid7(),
            "type": event_type,
            "schema_version": version,
            "occurred_at": datetime.now(UTC).isoformat(),
            "producer": "intake",
            "key": "k-1",
            "correlation_id": "k-1",
            "causation_id": None,
            "data": data,
        }
    )


def test_an_unknown_event_type_is_refused() -> None:
    with pytest.raises(UnknownEvent, match="order_teleported"):
        decode_envelope(_wire("order_teleported", 1, {}))


def test_a_newer_schema_version_is_refused() -> None:
    doc = orjson.loads(new_envelope(accepted_order()).encode())
    doc["schema_version"] = OrderAccepted.schema_version + 1
    with pytest.raises(UnknownEvent, match="newer"):
        decode_envelope(orjson.dumps(doc))


@pytest.mark.parametrize("raw", [b"[]", b'{"type": "order_accepted"}'])
def test_an_envelope_without_its_parts_is_refused(raw: bytes) -> None:
    with pytest.raises(UnknownEvent):
        decode_envelope(raw)


class ParcelWeighed(Event):
    """A test-only event at version 3 that renamed and retyped a field twice."""

    event_type: ClassVar[str] = "test_parcel_weighed"
    schema_version: ClassVar[int] = 3
    producer: ClassVar[str] = "fulfillment"
    upcasters: ClassVar[dict[int, Callable[[dict[str, Any]], dict[str, Any]]]] = {
        # v1 -> v2: "weight" (kilograms, a string) became "weight_kg".
        1: lambda d: {"parcel_id": d["parcel_id"], "weight_kg": d["weight"]},
        # v2 -> v3: kilograms became grams, an integer.
        2: lambda d: {
            "parcel_id": d["parcel_id"],
            "weight_g": int(Decimal(d["weight_kg"]) * 1000),
        },
    }
    parcel_id: str
    weight_g: int

    def key(self) -> str:
        return self.parcel_id


@pytest.fixture
def registered_parcel_event(monkeypatch: pytest.MonkeyPatch) -> type[ParcelWeighed]:
    monkeypatch.setitem(REGISTRY, ParcelWeighed.event_type, ParcelWeighed)
    return ParcelWeighed


@pytest.mark.usefixtures("registered_parcel_event")
def test_an_old_payload_is_upcast_through_every_version() -> None:
    back = decode_envelope(_wire("test_parcel_weighed", 1, {"parcel_id": "p-1", "weight": "1.25"}))
    assert back.data == ParcelWeighed(parcel_id="p-1", weight_g=1250)
    assert back.schema_version == 3


@pytest.mark.usefixtures("registered_parcel_event")
def test_a_version_without_an_upcaster_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ParcelWeighed, "upcasters", {2: ParcelWeighed.upcasters[2]})
    with pytest.raises(UnknownEvent, match="no upcaster"):
        decode_envelope(_wire("test_parcel_weighed", 1, {"parcel_id": "p-1", "weight": "1"}))


def test_test_events_do_not_leak_into_the_registry() -> None:
    assert ParcelWeighed.event_type not in REGISTRY
    assert all(not name.startswith("test_") for name in REGISTRY)


def test_every_registered_event_has_a_producer_and_a_unique_type() -> None:
    assert {cls.producer for cls in REGISTRY.values()} <= set(subjects.SERVICES)
    assert all(name == cls.event_type for name, cls in REGISTRY.items())
