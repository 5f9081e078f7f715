"""Reading a submission: what a channel is told about what it sent."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import orjson
import pytest

from services.intake.domain import read_submission
from shared.contracts.common import FieldError
from shared.contracts.intake import MAX_SUBMISSION_BYTES, OrderSubmission
from tests.conftest import order_doc


def read(doc: dict[str, Any], channel: str = "web") -> OrderSubmission | list[FieldError]:
    return read_submission(orjson.dumps(doc), channel)


def errors_of(outcome: OrderSubmission | list[FieldError]) -> list[FieldError]:
    assert isinstance(outcome, list), f"expected a rejection, got {outcome!r}"
    return outcome


def fields_of(outcome: OrderSubmission | list[FieldError]) -> list[str]:
    return sorted(e.field for e in errors_of(outcome))


def line(**changes: Any) -> dict[str, Any]:
    return {"sku": "TEA-001", "quantity": 2, "unit_price": "12.50", **changes}


def test_a_valid_submission_is_read_with_exact_money() -> None:
    doc = order_doc("web-1001", lines=[line(), line(sku="CUP-02", quantity=3, unit_price="0.10")])
    outcome = read(doc, "web")
    assert isinstance(outcome, OrderSubmission)
    assert outcome.external_id == "web-1001"
    assert outcome.lines_total() == Decimal("25.30")
    assert outcome.customer.email == "mei.lin@example.com"


def test_the_channel_defaults_to_the_one_it_was_submitted_on() -> None:
    doc = order_doc(channel="wechat")
    del doc["channel"]
    outcome = read(doc, "wechat")
    assert isinstance(outcome, OrderSubmission)
    assert outcome.channel == "wechat"


def test_a_matching_total_is_accepted() -> None:
    assert isinstance(read(order_doc(total="25.00")), OrderSubmission)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"lines": [line(quantity=0)]}, "lines.0.quantity"),
        ({"lines": [line(), line(quantity=1001)]}, "lines.1.quantity"),
        ({"lines": [line(sku="tea 1")]}, "lines.0.sku"),
        ({"lines": [line(unit_price="-0.01")]}, "lines.0.unit_price"),
        ({"lines": [line(unit_price="1.005")]}, "lines.0.unit_price"),
        ({"lines": [line(unit_price="twelve")]}, "lines.0.unit_price"),
        ({"lines": []}, "lines"),
        ({"lines": [line() for _ in range(101)]}, "lines"),
        ({"currency": "cny"}, "currency"),
        ({"customer": {"name": "Mei Lin", "email": "mei.lin@"}}, "customer.email"),
        ({"customer": {"name": "Mei Lin", "phone": "call me"}}, "customer.phone"),
        ({"customer": {"name": "", "email": "mei@example.com"}}, "customer.name"),
        ({"external_id": "has spaces"}, "external_id"),
        ({"priority": "asap"}, "priority"),
        ({"note": "n" * 1001}, "note"),
        (
            {
                "shipping_address": {
                    "name": "Mei",
                    "city": "Hangzhou",
                    "postal_code": "310000",
                    "country": "CN",
                }
            },
            "shipping_address.line1",
        ),
    ],
)
def test_each_error_names_its_field(changes: dict[str, Any], field: str) -> None:
    assert fields_of(read(order_doc(**changes))) == [field]


def test_a_missing_field_is_named() -> None:
    doc = order_doc()
    del doc["shipping_address"]
    assert fields_of(read(doc)) == ["shipping_address"]


def test_every_field_error_is_reported_at_once() -> None:
    doc = order_doc(
        channel="shop",
        currency="yuan",
        customer={"name": "Mei Lin", "email": "nope"},
        lines=[line(quantity=0), line(sku="x")],
        shipping_address={
            "name": "Mei",
            "line1": "1 Road",
            "city": "Hangzhou",
            "postal_code": "310000",
            "country": "China",
        },
    )
    assert fields_of(read(doc, "web")) == [
        "channel",
        "currency",
        "customer.email",
        "lines.0.quantity",
        "lines.1.sku",
        "shipping_address.country",
    ]


def test_an_oversized_submission_is_refused_before_parsing() -> None:
    raw = orjson.dumps(order_doc(note="x" * MAX_SUBMISSION_BYTES))
    [error] = errors_of(read_submission(raw, "web"))
    assert error.field == "(body)"
    assert str(MAX_SUBMISSION_BYTES) in error.reason


def test_a_body_that_is_not_json_is_a_body_error() -> None:
    [error] = errors_of(read_submission(b"<order id='1'/>", "web"))
    assert error.field == "(body)"
    assert "JSON" in error.reason


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"an order"', b"42", b"null"])
def test_json_that_is_not_an_object_is_a_body_error(raw: bytes) -> None:
    [error] = errors_of(read_submission(raw, "web"))
    assert error.field == "(body)"
    assert "object" in error.reason


def test_a_submission_naming_another_channel_is_refused() -> None:
    [error] = errors_of(read(order_doc(channel="shop"), "web"))
    assert error.field == "channel"
    assert "'shop'" in error.reason


def test_a_total_that_does_not_add_up_is_refused() -> None:
    [error] = errors_of(read(order_doc(total="24.99")))
    assert error.field == "total"
    assert "24.99" in error.reason and "25.00" in error.reason


def test_a_customer_without_email_or_phone_is_refused() -> None:
    [error] = errors_of(read(order_doc(customer={"name": "Mei Lin"})))
    assert error.field == "customer"
    assert "e-mail" in error.reason and "phone" in error.reason


def test_a_customer_with_only_a_phone_is_accepted() -> None:
    assert isinstance(
        read(order_doc(customer={"name": "Mei Lin", "phone": "+86 571 8888 0000"})),
        OrderSubmission,
    )


def test_a_currency_orderflow_does_not_price_in_is_refused() -> None:
    [error] = errors_of(read(order_doc(currency="XAU")))
    assert error.field == "currency"
    assert "XAU" in error.reason


def test_cross_field_errors_name_their_field_and_all_are_reported() -> None:
    outcome = read(order_doc(currency="XAU", customer={"name": "Mei Lin"}, total="99.00"))
    assert fields_of(outcome) == ["currency", "customer", "total"]


def test_a_malformed_value_is_explained_for_a_person_not_as_a_regular_expression() -> None:
    outcome = read(
        order_doc(
            customer={"name": "Li Wei", "email": "li.wei@", "phone": "call me"},
            lines=[line(sku="tea 1")],
            shipping_address={**order_doc()["shipping_address"], "country": "China"},
        )
    )
    reasons = {e.field: e.reason for e in errors_of(outcome)}
    assert reasons == {
        "customer.email": "'li.wei@' is not an e-mail address",
        "customer.phone": "'call me' is not a phone number "
        "(digits, with an optional +, spaces, dashes, brackets)",
        "lines.0.sku": "'tea 1' is not a SKU (3-32 upper-case letters, digits and dashes, "
        "e.g. TEA-001)",
        "shipping_address.country": "'China' is not a two-letter ISO country code (e.g. CN)",
    }
    assert not any("pattern" in reason for reason in reasons.values())
