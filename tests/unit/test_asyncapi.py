"""The AsyncAPI document is generated from the contracts and committed current, and a change to
a contract that would break a consumer on the previous release (the committed baseline) is
caught: a removed or retyped field, a new required field, a renamed subject, a new version
without an upcaster."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field, create_model

from orderflow.cli import main
from orderflow.commands.contracts import render
from shared import subjects
from shared.contracts import REGISTRY, Event
from shared.contracts.asyncapi import breaking_changes, document
from shared.contracts.common import Address, Sku

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "docs" / "asyncapi.json"
BASELINE = ROOT / "docs" / "asyncapi.baseline.json"


def test_the_committed_document_is_current() -> None:
    assert DOCUMENT.read_text() == render(document()), (
        "docs/asyncapi.json is stale: run `orderflow asyncapi --write` and commit it"
    )


def test_no_change_breaks_a_consumer_on_the_previous_release() -> None:
    assert breaking_changes(json.loads(BASELINE.read_text()), document()) == []


def test_every_event_has_its_subject_stream_and_fields() -> None:
    doc = document()
    assert doc["asyncapi"] == "3.0.0"
    for event_type, cls in REGISTRY.items():
        channel = doc["channels"][event_type]
        assert channel["address"] == subjects.event(cls.producer, event_type, "{key}")
        assert channel["x-stream"] == f"ORDERFLOW_{cls.producer.upper()}"
        message = doc["components"]["messages"][cls.__name__]
        assert message["payload"]["properties"]["schema_version"] == {"const": cls.schema_version}
        schema = doc["components"]["schemas"][cls.__name__]
        assert set(schema["properties"]) == set(cls.model_fields)


# --- the compatibility check, on an event of its own --------------------------------------------


def parcel(version: int = 1, upcasters: dict[int, Any] | None = None, **fields: Any) -> type[Event]:
    """A ``parcel_weighed`` event of inventory's with ``fields`` (name=(type, Field)); not
    registered, so the real contracts are untouched."""
    base: dict[str, Any] = {
        "order_id": (str, Field(description="The order")),
        "sku": (Sku, Field()),
        "grams": (int, Field(ge=0)),
        "ship_to": (Address, Field()),
    }
    for name, spec in fields.items():
        if spec is None:
            base.pop(name)
        else:
            base[name] = spec
    cls = create_model("ParcelWeighed", __base__=Event, **base)  # type: ignore[call-overload]
    cls.event_type = "parcel_weighed"
    cls.producer = subjects.INVENTORY
    cls.schema_version = version
    cls.upcasters = upcasters or {}
    return cls  # type: ignore[no-any-return]


def compat(before: type[Event], after: type[Event], **changes: Any) -> list[str]:
    old = document({"parcel_weighed": before})
    new = document({"parcel_weighed": after})
    if "address" in changes:
        new["channels"]["parcel_weighed"]["address"] = changes["address"]
    return breaking_changes(old, new, lambda _t: after.upcasters)


def test_an_optional_field_may_be_added_within_a_version() -> None:
    assert compat(parcel(), parcel(note=(str | None, Field(None, max_length=100)))) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"grams": None}, "parcel_weighed v1: field data.grams removed"),
        ({"grams": (str, Field())}, "parcel_weighed v1: field data.grams retyped"),
        ({"carrier": (str, Field())}, "parcel_weighed v1: new required field data.carrier"),
        (
            {"ship_to": (Address | None, Field(None))},
            "parcel_weighed v1: field data.ship_to retyped (no longer an object)",
        ),
    ],
)
def test_a_breaking_change_within_a_version_is_caught(change: dict[str, Any], problem: str) -> None:
    assert compat(parcel(), parcel(**change)) == [problem]


def test_a_change_inside_a_nested_contract_is_caught() -> None:
    class NarrowAddress(Address):
        postal_code: int  # type: ignore[assignment]

    NarrowAddress.__name__ = "Address"
    found = compat(parcel(), parcel(ship_to=(NarrowAddress, Field())))
    assert found == ["parcel_weighed v1: field data.ship_to.postal_code retyped"]


def test_a_renamed_subject_is_caught() -> None:
    assert compat(parcel(), parcel(), address="orderflow.inventory.parcel_weight.{key}") == [
        "parcel_weighed: subject renamed from 'orderflow.inventory.parcel_weighed.{key}' "
        "to 'orderflow.inventory.parcel_weight.{key}'"
    ]


def test_a_new_version_needs_an_upcaster_from_the_previous_one() -> None:
    reshaped = {"grams": None, "kilograms": (float, Field())}
    assert compat(parcel(), parcel(version=2, **reshaped)) == [
        "parcel_weighed: schema_version 1 -> 2 without an upcaster from v1"
    ]

    def grams_to_kilograms(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "kilograms": data.pop("grams") / 1000}

    upcast = parcel(version=2, upcasters={1: grams_to_kilograms}, **reshaped)
    assert compat(parcel(), upcast) == []


def test_a_removed_event_is_caught() -> None:
    old = document({"parcel_weighed": parcel()})
    assert breaking_changes(old, document({})) == [
        "parcel_weighed: removed (its consumers would wait for it forever)"
    ]


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def test_orderflow_asyncapi_check_fails_on_a_stale_document(tmp_path: Path) -> None:
    out, baseline = tmp_path / "asyncapi.json", tmp_path / "baseline.json"
    flags = ("--out", str(out), "--baseline", str(baseline))
    code, _, err = run_cli("asyncapi", "--check", *flags)
    assert code == 1 and "is stale" in err and "no baseline" in err
    assert run_cli("asyncapi", "--release", *flags)[0] == 0
    code, text, _ = run_cli("asyncapi", "--check", *flags)
    assert code == 0 and "is current; no change breaks a consumer" in text
    out.write_text(out.read_text().replace('"3.0.0"', '"2.6.0"'))
    assert run_cli("asyncapi", "--check", *flags)[0] == 1
