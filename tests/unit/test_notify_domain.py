"""Notify's rules: who is told, and the words they get in each language."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from services.notify import domain
from services.notify.domain import (
    AttemptOutcome,
    Draft,
    Recipient,
    RetryPolicy,
    Route,
    TemplateBook,
)
from shared.contracts.common import Address, Customer, FieldError, OrderLine, StockLine
from shared.contracts.fulfillment import (
    OrderCancelled,
    RefundDue,
    ReturnReceived,
    ShipmentDelivered,
    ShipmentDeliveryFailed,
    ShipmentEscalated,
    ShipmentOverdue,
    ShipmentShipped,
)
from shared.contracts.intake import OrderAccepted, OrderRejected
from shared.contracts.inventory import LowStock, Shortage, StockBackordered
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
        domain.cancelled(cancellation(order.order_id), who),
        domain.return_received(returned(order.order_id), who),
        domain.refund_due(refund(order.order_id), who),
        domain.dead_letter_alert(dead_letter(), locale),
        domain.rejection_burst_alert(
            "web",
            25,
            300,
            OrderRejected(
                order_id=uuid7(),
                channel="web",
                errors=[FieldError(field="currency", reason="unknown")],
                submitted_at=NOW,
            ),
            locale,
        ),
        failed_alert(locale),
        domain.delivery_delayed(
            ShipmentDeliveryFailed(
                order_id=order.order_id,
                shipment_id=uuid7(),
                warehouse="WH-1",
                actor="carrier",
                submitted_at=NOW,
                carrier="SF",
                tracking_number="SF1",
                reason="no one home",
                attempt=1,
            ),
            who,
        ),
        domain.low_stock_alert(LowStock(sku="TEA-001", available=2, reorder_point=5), locale),
        *(
            domain.sla_alert(
                kind(
                    order_id=order.order_id,
                    shipment_id=uuid7(),
                    warehouse="WH-1",
                    actor="system",
                    submitted_at=NOW,
                    status="queued",
                    sla_deadline=NOW,
                    escalation_deadline=NOW + timedelta(hours=2),
                ),
                locale,
            )
            for kind in (ShipmentOverdue, ShipmentEscalated)
        ),
    ]
    assert {d.template for d in drafts} == set(domain.TEMPLATES)
    for draft in drafts:
        assert draft is not None
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


def cancellation(order_id: str) -> OrderCancelled:
    return OrderCancelled(order_id=order_id, reason="customer changed their mind", actor="cli")


def returned(order_id: str) -> ReturnReceived:
    return ReturnReceived(
        order_id=order_id,
        shipment_id=uuid7(),
        lines=[StockLine(sku="TEA-001", warehouse="WH-1", quantity=2)],
        actor="warehouse",
    )


def refund(order_id: str) -> RefundDue:
    return RefundDue(
        order_id=order_id, amount=Decimal("25.00"), currency="CNY", reason="return of 2 x TEA-001"
    )


def dead_letter() -> domain.DeadLetter:
    envelope = orjson.dumps(
        {"type": "shipment_shipped", "correlation_id": "O-123", "data": {"bad": True}}
    )
    return domain.dead_letter_of(
        "orderflow.dlq.notify.notify-fulfillment",
        {
            "Orderflow-Error": "failed 12 times, last error: RecipientNotYetKnown()",
            "Orderflow-Original-Subject": "orderflow.fulfillment.shipment_shipped.O-123",
            "Orderflow-Stream": "ORDERFLOW_FULFILLMENT",
            "Orderflow-Stream-Seq": "42",
            "Orderflow-Consumer": "notify-fulfillment",
            "Orderflow-Deliveries": "12",
        },
        envelope,
    )


def failed_alert(locale: str) -> Draft | None:
    return domain.delivery_failed_alert(
        domain.FailedDelivery(
            delivery_id="D-1",
            notification_id="N-1",
            order_id="O-1",
            template="order_shipped",
            recipient="li.wei@example.com",
            sink="webhook",
            address="li.wei@example.com",
            attempts=10,
            error="HTTP 503",
        ),
        locale,
    )


def test_a_cancellation_gives_the_reason_in_both_languages() -> None:
    for locale, subject, reason_line in (
        ("en", "Your order {} is cancelled", "Reason: customer changed their mind"),
        ("zh-CN", "您的订单 {} 已取消", "原因：customer changed their mind"),  # noqa: RUF001
    ):
        who = customer_of(locale)
        text = BOOK.render(domain.cancelled(cancellation(who.order_id), who))
        assert text.subject == subject.format(who.external_id)
        assert reason_line in text.body


def test_a_return_and_its_refund_are_told_with_items_and_amount() -> None:
    who = customer_of("zh-CN")

    got = BOOK.render(domain.return_received(returned(who.order_id), who))
    owed = BOOK.render(domain.refund_due(refund(who.order_id), who))

    assert got.subject == f"我们已收到订单 {who.external_id} 的退货"
    assert "2 x TEA-001" in got.body
    assert owed.subject == f"订单 {who.external_id} 将退款 25.00 CNY"
    assert domain.refund_due(refund(who.order_id), who).order_id == who.order_id


def test_a_dead_letter_alert_names_consumer_subject_error_and_order() -> None:
    letter = dead_letter()

    draft = domain.dead_letter_alert(letter, "en")
    text = BOOK.render(draft)

    assert (draft.recipient, draft.audience, draft.order_id) == (
        "operations",
        "operations",
        "O-123",
    )
    assert text.subject == "[orderflow] Message dead-lettered by notify-fulfillment"
    assert "orderflow.fulfillment.shipment_shipped.O-123" in text.body
    assert "after 12 deliveries" in text.body
    assert "RecipientNotYetKnown" in text.body


def test_a_dead_letter_that_is_not_json_is_still_read() -> None:
    letter = domain.dead_letter_of("orderflow.dlq.intake.x", None, b"\xff not json")

    assert letter.order_id is None and letter.event_type is None
    assert letter.error == "(no error recorded)"
    assert BOOK.render(domain.dead_letter_alert(letter, "zh-CN")).locale == "zh-CN"


def test_an_undeliverable_alert_raises_no_alert_of_its_own() -> None:
    alert = failed_alert("en")
    assert alert is not None
    text = BOOK.render(alert)
    assert "resend D-1" in text.body

    about_an_alert = domain.FailedDelivery(
        "D-2", "N-2", None, domain.ALERT_DELIVERY_FAILED, "operations", "log", "x", 3, "disk full"
    )
    assert domain.delivery_failed_alert(about_an_alert, "en") is None


def test_a_burst_is_alerted_once_per_window() -> None:
    window = 300.0

    assert not domain.burst_due(19, 20, None, 1000.0, window)
    assert domain.burst_due(20, 20, None, 1000.0, window)
    # Alerted 100 s ago: the same burst goes on, no second alert.
    assert not domain.burst_due(40, 20, 900.0, 1000.0, window)
    # The last alert is a window old: a burst now is a new one.
    assert domain.burst_due(20, 20, 700.0, 1000.0, window)


def test_selectors_name_audiences_templates_all_or_none_and_refuse_typos() -> None:
    assert domain.parse_selector("all") == {"all"}
    assert domain.parse_selector(" none ") == frozenset()
    assert domain.parse_selector("") == frozenset()
    assert domain.parse_selector("customer, alert_dead_letter") == {
        "customer",
        "alert_dead_letter",
    }
    with pytest.raises(ValueError, match="order_shiped"):
        domain.parse_selector("order_shiped")


def test_routes_send_each_message_only_where_it_is_wanted_and_reachable() -> None:
    routes = [
        Route("log", "log", frozenset({"all"})),
        Route("webhook", "webhook", frozenset({"customer"})),
        Route("email", "email", frozenset({"all"}), operations_address="ops@example.com"),
        Route("pager", "webhook", frozenset({"alert_dead_letter"})),
    ]
    who = customer_of("en")
    by_phone = domain.recipient_of(accepted(email=None, phone="+86 138 0000 0000"))
    shipped_note = domain.shipped(shipped(who.order_id), who)
    phone_note = domain.shipped(shipped(by_phone.order_id), by_phone)
    rejected_note = domain.rejection(
        OrderRejected(order_id=uuid7(), channel="web", errors=[], submitted_at=NOW)
    )
    alert = domain.dead_letter_alert(dead_letter(), "en")

    assert domain.deliveries_for(shipped_note, routes) == [
        ("log", "li.wei@example.com"),
        ("webhook", "li.wei@example.com"),
        ("email", "li.wei@example.com"),
    ]
    # E-mail cannot reach a phone number or a channel; the webhook passes them on.
    assert [s for s, _ in domain.deliveries_for(phone_note, routes)] == ["log", "webhook"]
    assert [s for s, _ in domain.deliveries_for(rejected_note, routes)] == ["log", "webhook"]
    assert domain.deliveries_for(alert, routes) == [
        ("log", "operations"),
        ("email", "ops@example.com"),
        ("pager", "operations"),
    ]
    no_ops_mailbox = [Route("email", "email", frozenset({"all"}))]
    assert domain.deliveries_for(alert, no_ops_mailbox) == []


def test_retry_delays_double_up_to_a_cap_with_bounded_jitter() -> None:
    policy = RetryPolicy(max_attempts=10, base_s=2.0, max_delay_s=60.0, jitter=0.2)

    plain = [policy.delay(n, draw=0.5) for n in range(1, 8)]
    assert plain == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert policy.delay(3, draw=0.0) == pytest.approx(8.0 * 0.8)
    assert policy.delay(3, draw=0.999999) == pytest.approx(8.0 * 1.2, rel=1e-5)


def test_a_failed_attempt_is_retried_until_the_limit_then_given_up() -> None:
    policy = RetryPolicy(max_attempts=3, base_s=1.0, jitter=0.0)
    failed = AttemptOutcome(ok=False, duration_s=0.1, error="HTTP 503")
    refused = AttemptOutcome(ok=False, duration_s=0.1, error="HTTP 400", retryable=False)

    first = domain.after_attempt(failed, 1, 3, policy, now=100.0, draw=0.5)
    second = domain.after_attempt(failed, 2, 3, policy, now=100.0, draw=0.5)
    last = domain.after_attempt(failed, 3, 3, policy, now=100.0, draw=0.5)

    assert (first.action, first.retry_at) == ("retry", 101.0)
    assert (second.action, second.retry_at) == ("retry", 102.0)
    assert last.action == "give_up"
    assert domain.after_attempt(refused, 1, 3, policy, 100.0, 0.5).action == "give_up"
    ok = AttemptOutcome(ok=True, duration_s=0.1)
    assert domain.after_attempt(ok, 3, 3, policy, 100.0, 0.5).action == "sent"
