"""Notify's rules: who hears about which event, in which words, through which sinks, and when a
failed delivery is tried again. No SQLAlchemy, no NATS.

Words live in files, ``templates/<locale>/<template>.txt``: the first line is the subject, the
rest the body, each filled with ``str.format_map`` from the fields a rule below gives. A locale
without the template falls back to English.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import orjson

from shared.contracts.common import OrderLine, StockLine
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

TEMPLATE_DIR = Path(__file__).parent / "templates"
DEFAULT_LOCALE = "en"

# Who a message is for: a customer (or the channel that speaks for them), or the operations staff.
CUSTOMER = "customer"
OPERATIONS = "operations"
# Operations alerts have one recipient; each sink knows where that is (an e-mail sink is given an
# address for it, a webhook or the log takes it as it is).
OPERATIONS_RECIPIENT = "operations"

ORDER_CONFIRMED = "order_confirmed"
ORDER_REJECTED = "order_rejected"
ORDER_DELAYED = "order_delayed"
ORDER_SHIPPED = "order_shipped"
ORDER_DELIVERED = "order_delivered"
ORDER_CANCELLED = "order_cancelled"
RETURN_RECEIVED = "return_received"
REFUND_DUE = "refund_due"
ALERT_DEAD_LETTER = "alert_dead_letter"
ALERT_REJECTION_BURST = "alert_rejection_burst"
ALERT_DELIVERY_FAILED = "alert_delivery_failed"
ALERT_LOW_STOCK = "alert_low_stock"
ALERT_SHIPMENT_OVERDUE = "alert_shipment_overdue"
ALERT_SHIPMENT_ESCALATED = "alert_shipment_escalated"
DELIVERY_DELAYED = "delivery_delayed"

AUDIENCE: dict[str, str] = {
    ORDER_CONFIRMED: CUSTOMER,
    ORDER_REJECTED: CUSTOMER,
    ORDER_DELAYED: CUSTOMER,
    ORDER_SHIPPED: CUSTOMER,
    ORDER_DELIVERED: CUSTOMER,
    ORDER_CANCELLED: CUSTOMER,
    RETURN_RECEIVED: CUSTOMER,
    REFUND_DUE: CUSTOMER,
    ALERT_DEAD_LETTER: OPERATIONS,
    ALERT_REJECTION_BURST: OPERATIONS,
    ALERT_DELIVERY_FAILED: OPERATIONS,
    ALERT_LOW_STOCK: OPERATIONS,
    ALERT_SHIPMENT_OVERDUE: OPERATIONS,
    ALERT_SHIPMENT_ESCALATED: OPERATIONS,
    DELIVERY_DELAYED: CUSTOMER,
}
TEMPLATES = tuple(AUDIENCE)

# Selector words that are not template names.
ALL = "all"
NONE = "none"


@dataclass(frozen=True, slots=True)
class Recipient:
    """The customer of one order, as the accepted order named them."""

    order_id: str
    external_id: str
    name: str
    email: str | None
    phone: str | None
    locale: str
    channel: str
    priority: str
    submitted_at: datetime

    @property
    def address(self) -> str:
        return address_of(self.email, self.phone, self.channel)

    def fields(self) -> dict[str, str]:
        return {
            "name": self.name,
            "order_id": self.order_id,
            "external_id": self.external_id,
            "channel": self.channel,
        }


@dataclass(frozen=True, slots=True)
class Draft:
    """A notification decided on: what to say, to whom, in which language, about which order."""

    template: str
    recipient: str
    locale: str
    fields: dict[str, str]
    order_id: str | None = None

    @property
    def audience(self) -> str:
        return AUDIENCE.get(self.template, CUSTOMER)


@dataclass(frozen=True, slots=True)
class Rendered:
    locale: str  # the one actually used, after any fallback
    subject: str
    body: str


@dataclass(frozen=True, slots=True)
class Notification:
    """A rendered notification as it is stored; each sink that takes it gets a delivery."""

    notification_id: str
    source_event_id: str
    order_id: str | None
    template: str
    audience: str
    locale: str
    recipient: str
    subject: str
    body: str
    created_at: float


def address_of(email: str | None, phone: str | None, channel: str) -> str:
    # An accepted order always has an e-mail or a phone (intake checks it); the channel is the
    # last resort so that a contract change never leaves an order without anyone told.
    return email or phone or channel_address(channel)


def channel_address(channel: str) -> str:
    return f"channel:{channel}"


def recipient_of(event: OrderAccepted) -> Recipient:
    customer = event.customer
    return Recipient(
        order_id=event.order_id,
        external_id=event.external_id,
        name=customer.name,
        email=customer.email,
        phone=customer.phone,
        locale=customer.locale,
        channel=event.channel,
        priority=event.priority,
        submitted_at=event.submitted_at,
    )


# --- customer messages ---------------------------------------------------------------------


def confirmation(event: OrderAccepted) -> Draft:
    who = recipient_of(event)
    return _to(
        who,
        ORDER_CONFIRMED,
        {
            "total": str(event.total),
            "currency": event.currency,
            "lines": _order_lines(event.lines),
            "item_count": str(sum(line.quantity for line in event.lines)),
        },
    )


def rejection(event: OrderRejected) -> Draft:
    """Told to the channel, not the customer: a rejected order's customer data may be the very
    thing that could not be read."""
    return Draft(
        ORDER_REJECTED,
        channel_address(event.channel),
        DEFAULT_LOCALE,
        {
            "order_id": event.order_id,
            "channel": event.channel,
            "external_id": event.external_id or "-",
            "error_count": str(len(event.errors)),
            "errors": "\n".join(f"  - {e.field}: {e.reason}" for e in event.errors),
        },
        event.order_id,
    )


def delay(event: StockBackordered, who: Recipient) -> Draft:
    return _to(
        who,
        ORDER_DELAYED,
        {"shortages": _shortages(event.shortages), "deadline": _when(event.deadline)},
    )


def shipped(event: ShipmentShipped, who: Recipient) -> Draft:
    return _to(
        who,
        ORDER_SHIPPED,
        {
            "carrier": event.carrier,
            "tracking_number": event.tracking_number,
            "shipment_id": event.shipment_id,
        },
    )


def delivered(event: ShipmentDelivered, who: Recipient) -> Draft:
    return _to(who, ORDER_DELIVERED, {"shipment_id": event.shipment_id})


def cancelled(event: OrderCancelled, who: Recipient) -> Draft:
    return _to(who, ORDER_CANCELLED, {"reason": event.reason})


def return_received(event: ReturnReceived, who: Recipient) -> Draft:
    return _to(
        who,
        RETURN_RECEIVED,
        {
            "lines": _stock_lines(event.lines),
            "item_count": str(sum(line.quantity for line in event.lines)),
        },
    )


def refund_due(event: RefundDue, who: Recipient) -> Draft:
    return _to(
        who,
        REFUND_DUE,
        {"amount": str(event.amount), "currency": event.currency, "reason": event.reason},
    )


def delivery_delayed(event: ShipmentDeliveryFailed, who: Recipient) -> Draft:
    """The carrier could not deliver: the customer hears it will be tried again."""
    return _to(
        who,
        DELIVERY_DELAYED,
        {
            "carrier": event.carrier or "-",
            "tracking_number": event.tracking_number or "-",
            "reason": event.reason,
            "attempt": str(event.attempt),
        },
    )


def _to(who: Recipient, template: str, fields: dict[str, str]) -> Draft:
    return Draft(template, who.address, who.locale, {**who.fields(), **fields}, who.order_id)


# --- operations alerts ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message some consumer gave up on, as the dead-letter stream holds it."""

    subject: str  # where it was dead-lettered (orderflow.dlq.<service>.<consumer>)
    original_subject: str
    stream: str
    stream_seq: str
    consumer: str
    deliveries: str
    error: str
    event_type: str | None
    order_id: str | None


def dead_letter_of(subject: str, headers: Mapping[str, str] | None, data: bytes) -> DeadLetter:
    """Read a dead letter from its headers and, where it is an envelope, its payload. Never
    raises: a dead letter that cannot be read is exactly the one an operator must hear about."""
    h = headers or {}
    event_type: str | None = None
    order_id: str | None = None
    try:
        doc: Any = orjson.loads(data)
    except orjson.JSONDecodeError:
        doc = None
    if isinstance(doc, dict):
        if isinstance(doc.get("type"), str):
            event_type = doc["type"]
        # An order's events correlate on the order id; a submission has none yet.
        if isinstance(doc.get("correlation_id"), str) and event_type is not None:
            order_id = doc["correlation_id"][:64]
    return DeadLetter(
        subject=subject,
        original_subject=h.get("Orderflow-Original-Subject", "?"),
        stream=h.get("Orderflow-Stream", "?"),
        stream_seq=h.get("Orderflow-Stream-Seq", "?"),
        consumer=h.get("Orderflow-Consumer", "?"),
        deliveries=h.get("Orderflow-Deliveries", "?"),
        error=h.get("Orderflow-Error", "(no error recorded)"),
        event_type=event_type,
        order_id=order_id,
    )


def dead_letter_alert(letter: DeadLetter, locale: str) -> Draft:
    return Draft(
        ALERT_DEAD_LETTER,
        OPERATIONS_RECIPIENT,
        locale,
        {
            "consumer": letter.consumer,
            "original_subject": letter.original_subject,
            "stream": letter.stream,
            "stream_seq": letter.stream_seq,
            "deliveries": letter.deliveries,
            "error": letter.error,
            "event_type": letter.event_type or "-",
            "order_id": letter.order_id or "-",
        },
        letter.order_id,
    )


def low_stock_alert(event: LowStock, locale: str) -> Draft:
    return Draft(
        ALERT_LOW_STOCK,
        OPERATIONS_RECIPIENT,
        locale,
        {
            "sku": event.sku,
            "available": str(event.available),
            "reorder_point": str(event.reorder_point),
        },
    )


def sla_alert(event: ShipmentOverdue | ShipmentEscalated, locale: str) -> Draft:
    """Overdue (missed the SLA) or escalated (missed the second threshold): operations acts."""
    template = (
        ALERT_SHIPMENT_ESCALATED if isinstance(event, ShipmentEscalated) else ALERT_SHIPMENT_OVERDUE
    )
    return Draft(
        template,
        OPERATIONS_RECIPIENT,
        locale,
        {
            "order_id": event.order_id,
            "shipment_id": event.shipment_id,
            "warehouse": event.warehouse,
            "status": event.status,
            "sla_deadline": event.sla_deadline.isoformat(timespec="minutes"),
            "escalation_deadline": event.escalation_deadline.isoformat(timespec="minutes"),
        },
        event.order_id,
    )


def burst_due(
    rejections_in_window: int,
    threshold: int,
    last_alert_at: float | None,
    at: float,
    window_s: float,
) -> bool:
    """A channel's rejections within the window reached the threshold, and it has not been
    alerted about within the window: one alert per burst, not one per rejection."""
    if rejections_in_window < threshold:
        return False
    return last_alert_at is None or at - last_alert_at >= window_s


def rejection_burst_alert(
    channel: str, rejections: int, window_s: float, latest: OrderRejected, locale: str
) -> Draft:
    return Draft(
        ALERT_REJECTION_BURST,
        OPERATIONS_RECIPIENT,
        locale,
        {
            "channel": channel,
            "rejections": str(rejections),
            "window": _duration(window_s),
            "latest_order_id": latest.order_id,
            "latest_errors": "\n".join(f"  - {e.field}: {e.reason}" for e in latest.errors),
        },
    )


@dataclass(frozen=True, slots=True)
class FailedDelivery:
    """A delivery that was given up on, with what operations needs to act on it."""

    delivery_id: str
    notification_id: str
    order_id: str | None
    template: str
    recipient: str
    sink: str
    address: str
    attempts: int
    error: str


def delivery_failed_alert(failed: FailedDelivery, locale: str) -> Draft | None:
    # An alert that could not be delivered raises no alert of its own: that would loop for as
    # long as the alerts' sink is down. It is still recorded, counted and emitted as an event.
    if failed.template == ALERT_DELIVERY_FAILED:
        return None
    return Draft(
        ALERT_DELIVERY_FAILED,
        OPERATIONS_RECIPIENT,
        locale,
        {
            "delivery_id": failed.delivery_id,
            "notification_id": failed.notification_id,
            "order_id": failed.order_id or "-",
            "template": failed.template,
            "recipient": failed.recipient,
            "sink": failed.sink,
            "address": failed.address,
            "attempts": str(failed.attempts),
            "error": failed.error,
        },
        failed.order_id,
    )


# --- routing: which sinks get which messages ------------------------------------------------

SinkKind = Literal["log", "webhook", "email"]
EMAIL_ADDRESS = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")


def parse_selector(text: str) -> frozenset[str]:
    """``all``, ``none``, or a comma list of audiences (customer, operations) and template
    names. Raises ValueError naming a word that is none of these (a typo must not silently
    route nothing)."""
    words = {w.strip() for w in text.split(",") if w.strip()}
    if not words or words == {NONE}:
        return frozenset()
    known = {ALL, CUSTOMER, OPERATIONS, *TEMPLATES}
    unknown = sorted(words - known)
    if unknown:
        raise ValueError(
            f"unknown event selector {', '.join(unknown)}: use all, none, customer, operations "
            f"or template names ({', '.join(TEMPLATES)})"
        )
    return frozenset(words)


@dataclass(frozen=True, slots=True)
class Route:
    """One sink's share of the messages: which it takes, and how it addresses a recipient."""

    sink: str
    kind: SinkKind
    selects: frozenset[str]
    operations_address: str | None = None

    def takes(self, template: str) -> bool:
        s = self.selects
        return ALL in s or template in s or AUDIENCE.get(template, CUSTOMER) in s

    def address_for(self, recipient: str) -> str | None:
        """Where this sink sends a message for ``recipient``; None if it cannot reach them
        (an e-mail sink cannot reach a phone number or a channel)."""
        if self.kind != "email":
            return recipient
        if recipient == OPERATIONS_RECIPIENT:
            return self.operations_address
        return recipient if EMAIL_ADDRESS.match(recipient) else None


def deliveries_for(draft: Draft, routes: Sequence[Route]) -> list[tuple[str, str]]:
    """(sink, address) for every sink that takes this message and can reach its recipient."""
    out = []
    for route in routes:
        if route.takes(draft.template):
            address = route.address_for(draft.recipient)
            if address is not None:
                out.append((route.sink, address))
    return out


# --- retries --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, and a give-up after ``max_attempts``."""

    max_attempts: int = 10
    base_s: float = 2.0
    max_delay_s: float = 600.0
    # Each delay is spread by +/- this fraction, so deliveries that failed together (an
    # endpoint down for everyone) do not all come back at the same instant.
    jitter: float = 0.2

    def delay(self, attempt: int, draw: float) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based); ``draw`` is a
        random number in [0, 1)."""
        raw = min(self.max_delay_s, self.base_s * 2.0 ** (attempt - 1))
        return max(0.0, raw * (1 + self.jitter * (2 * draw - 1)))


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    ok: bool
    duration_s: float
    error: str | None = None
    # False when trying again cannot help (the endpoint refused the message itself).
    retryable: bool = True
    status_code: int | None = None


@dataclass(frozen=True, slots=True)
class NextStep:
    action: Literal["sent", "retry", "give_up"]
    retry_at: float | None = None


def after_attempt(
    outcome: AttemptOutcome,
    attempts: int,
    attempt_limit: int,
    policy: RetryPolicy,
    now: float,
    draw: float,
) -> NextStep:
    if outcome.ok:
        return NextStep("sent")
    if not outcome.retryable or attempts >= attempt_limit:
        return NextStep("give_up")
    return NextStep("retry", now + policy.delay(attempts, draw))


# --- rendering ------------------------------------------------------------------------------


@dataclass
class TemplateBook:
    """Every template text by (locale, template name)."""

    texts: Mapping[tuple[str, str], str] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path = TEMPLATE_DIR) -> TemplateBook:
        return cls(
            {
                (path.parent.name, path.stem): path.read_text(encoding="utf-8")
                for path in root.glob("*/*.txt")
            }
        )

    def locales(self) -> set[str]:
        return {locale for locale, _ in self.texts}

    def names(self, locale: str) -> set[str]:
        return {name for loc, name in self.texts if loc == locale}

    def render(self, draft: Draft) -> Rendered:
        for locale in (draft.locale, DEFAULT_LOCALE):
            text = self.texts.get((locale, draft.template))
            if text is not None:
                break
        else:
            raise KeyError(f"no template {draft.template!r} in {draft.locale!r} nor in English")
        subject_template, _, body_template = text.partition("\n")
        # Subject and body are filled separately, so a value with a line break (a customer's
        # name) can never move text from the body into the subject, and the subject stays one
        # line (it becomes an e-mail header).
        subject = " ".join(subject_template.format_map(draft.fields).split())
        body = body_template.strip().format_map(draft.fields)
        return Rendered(locale, subject, body)


def _order_lines(lines: Iterable[OrderLine]) -> str:
    return "\n".join(f"  {line.quantity} x {line.sku}  {line.unit_price}" for line in lines)


def _stock_lines(lines: Iterable[StockLine]) -> str:
    return "\n".join(f"  {line.quantity} x {line.sku}" for line in lines)


def _shortages(shortages: Iterable[Shortage]) -> str:
    return "\n".join(f"  {s.sku} x {s.requested}" for s in shortages)


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"
