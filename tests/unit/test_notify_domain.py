"""Notify's rules: who is told, and the words they get in each language."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from services.notify import domain
from services.notify.domain import Draft, Recipient, TemplateBook
from shared.contracts.common import Address, Customer, FieldError, OrderLine, StockLine
from shared.contracts.fulfillment import ShipmentDelivered, ShipmentShipped
from shared.contracts.intake import OrderAccepted, OrderRejected
from shared.contracts.inventory import Shortage, StockBackordered
from shared.ids import uuid7

BOOK = TemplateBook.load()
NOW = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


def accepted(
    locale: str = "en", email: str | None = "li.wei@example.com", phone: str | None = None
) -> OrderAccepted:
    return OrderAccepted(
        order_id=uuid7(),
        channel="web",
        external_id=f"WEB-{uuid7()[-8:]}",
        customer=Customer(name="Li Wei", email=email, phone=phone, locale=locale),
        lines=[
            OrderLine(sku="TEA-001", quantity=2, unit_price=Decimal("12.50")),
            OrderLine(sku="CUP-7", quantity=1, unit_price=Decimal("8.00")),
        ],
        currency="CNY",
        total=Decimal("33.00"),
        shipping_address=Address(
            name="Li Wei", line1="1 Nanjing Rd", city="Shanghai", postal_code="200000", country="CN"
        ),
        priority="high",
        submitted_at=NOW,
    )


def customer_of(locale: str) -> Recipient:
    return domain.recipient_of(accepted(locale))


def shipped(order_id: str) -> ShipmentShipped:
    return ShipmentShipped(
        order_id=order_id,
        shipment_id=uuid7(),
        warehouse="WH-1",
        actor="simulator",
        submitted_at=NOW,
        carrier="SF-EXPRESS",
        tracking_number="SF123456789",
        lines=[StockLine(sku="TEA-001", warehouse="WH-1", quantity=2)],
    )


def test_confirmation_goes_to_the_customers_email_in_english() -> None:
    order = accepted()
    draft = domain.confirmation(order)
    text = BOOK.render(draft)

    assert draft.recipient == "li.wei@example.com"
    assert text.locale == "en"
    assert text.subject == f"Your order {order.external_id} is confirmed"
    assert "Hello Li Wei," in text.body
    assert "2 x TEA-001  12.50" in text.body
    assert "Total: 33.00 CNY" in text.body


def test_confirmation_goes_to_the_phone_when_there_is_no_email() -> None:
    draft = domain.confirmation(accepted(email=None, phone="+86 138 0000 0000"))

    assert draft.recipient == "+86 138 0000 0000"


def test_confirmation_in_simplified_chinese() -> None:
    order = accepted(locale="zh-CN")
    text = BOOK.render(domain.confirmation(order))

    assert text.locale == "zh-CN"
    assert text.subject == f"您的订单 {order.external_id} 已确认"
    assert "Li Wei，您好" in text.body  # noqa: RUF001 (Chinese punctuation is full-width)
    assert "合计：33.00 CNY" in text.body  # noqa: RUF001 (Chinese punctuation is full-width)


def test_an_unknown_locale_falls_back_to_english() -> None:
    order = accepted(locale="fr")
    text = BOOK.render(domain.confirmation(order))

    assert text.locale == "en"
    assert text.subject == f"Your order {order.external_id} is confirmed"


def test_a_template_missing_in_one_locale_falls_back_to_english() -> None:
    book = TemplateBook(
        {
            ("en", "order_shipped"): "Shipped {order_id}\nWith {carrier}",
            ("zh-CN", "order_delivered"): "已送达 {order_id}\n",
        }
    )
    draft = Draft("order_shipped", "a@example.com", "zh-CN", {"order_id": "O1", "carrier": "SF"})

    text = book.render(draft)

    assert (text.locale, text.subject, text.body) == ("en", "Shipped O1", "With SF")


def test_an_unknown_template_is_an_error_not_an_empty_message() -> None:
    with pytest.raises(KeyError):
        BOOK.render(Draft("order_teleported", "a@example.com", "en", {}))


def test_the_subject_stays_one_line_whatever_the_values_hold() -> None:
    book = TemplateBook({("en", "t"): "Hi {name}\nBody {name}"})

    text = book.render(Draft("t", "a@example.com", "en", {"name": "Eve\nBcc: x@example.com"}))

    assert text.subject == "Hi Eve Bcc: x@example.com"
    assert text.body == "Body Eve\nBcc: x@example.com"


def test_loading_reads_first_line_as_subject_and_the_rest_as_body(tmp_path: Path) -> None:
    (tmp_path / "de").mkdir()
    (tmp_path / "de" / "order_delivered.txt").write_text(
        "Bestellung {order_id} zugestellt\n\nHallo {name},\nsie ist da.\n", encoding="utf-8"
    )
    book = TemplateBook.load(tmp_path)

    text = book.render(Draft("order_delivered", "x", "de", {"order_id": "O7", "name": "Ana"}))

    assert text.subject == "Bestellung O7 zugestellt"
    assert text.body == "Hallo Ana,\nsie ist da."


def test_every_shipped_locale_has_every_template() -> None:
    assert {"en", "zh-CN"} <= BOOK.locales()
    for locale in BOOK.locales():
        assert BOOK.names(locale) == set(domain.TEMPLATES), locale


@pytest.mark.parametrize("locale", ["en", "zh-CN"])
def test_every_template_renders_with_the_fields_its_rule_gives(locale: str) -> None:
    """A placeholder no rule fills would fail at run time, for every message of that kind."""
    order = accepted(locale)
    who = domain.recipient_of(order)
    drafts = [
        domain.confirmation(order),
        domain.rejection(
            OrderRejected(
                order_id=uuid7(),
                channel="web",
                errors=[FieldError(field="lines", reason="at least 1 item")],
                submitted_at=NOW,
            )
        ),
        domain.delay(
            StockBackordered(
                order_id=order.order_id,
                shortages=[Shortage(sku="TEA-001", requested=2, available=0)],
                deadline=NOW + timedelta(days=3),
                submitted_at=NOW,
            ),
            who,
        ),
        domain.shipped(shipped(order.order_id), who),
        domain.delivered(
            ShipmentDelivered(
                order_id=order.order_id,
                shipment_id=uuid7(),
                warehouse="WH-1",
                actor="simulator",
                submitted_at=NOW,
            ),
            who,
        ),
    ]
    for draft in drafts:
        rendered = BOOK.render(Draft(draft.template, draft.recipient, locale, draft.fields))
        assert rendered.locale == locale
        assert rendered.subject and rendered.body
        assert "{" not in rendered.subject + rendered.body, draft.template


def test_a_rejection_goes_to_the_channel_and_lists_every_field_error() -> None:
    event = OrderRejected(
        order_id=uuid7(),
        channel="wechat",
        external_id=None,
        errors=[
            FieldError(field="customer.email", reason="not an e-mail address"),
            FieldError(field="lines.0.quantity", reason="must be at least 1"),
        ],
        submitted_at=NOW,
    )

    draft = domain.rejection(event)
    text = BOOK.render(draft)

    assert draft.recipient == "channel:wechat"
    assert "rejected with 2 error(s)" in text.body
    assert "  - customer.email: not an e-mail address" in text.body
    assert "  - lines.0.quantity: must be at least 1" in text.body


def test_a_delay_names_the_missing_items_and_the_deadline() -> None:
    who = customer_of("en")
    event = StockBackordered(
        order_id=who.order_id,
        shortages=[Shortage(sku="TEA-001", requested=2, available=1)],
        deadline=datetime(2026, 3, 4, 9, 30, tzinfo=UTC),
        submitted_at=NOW,
    )

    text = BOOK.render(domain.delay(event, who))

    assert text.subject == f"Your order {who.external_id} is delayed"
    assert "TEA-001 x 2" in text.body
    assert "2026-03-04 09:30 UTC" in text.body


def test_a_shipment_gives_carrier_and_tracking_number_in_chinese() -> None:
    who = customer_of("zh-CN")

    text = BOOK.render(domain.shipped(shipped(who.order_id), who))

    assert text.subject == f"您的订单 {who.external_id} 已发货"
    assert "SF-EXPRESS" in text.body
    assert "运单号：SF123456789" in text.body  # noqa: RUF001 (Chinese punctuation is full-width)
