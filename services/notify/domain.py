"""Notify's rules: who hears about which event, and in which words. No SQLAlchemy, no NATS.

Words live in files, ``templates/<locale>/<template>.txt``: the first line is the subject, the
rest the body, each filled with ``str.format_map`` from the fields a rule below gives. A locale
without the template falls back to English.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from shared.contracts.common import OrderLine
from shared.contracts.fulfillment import ShipmentDelivered, ShipmentShipped
from shared.contracts.intake import OrderAccepted, OrderRejected
from shared.contracts.inventory import Shortage, StockBackordered

TEMPLATE_DIR = Path(__file__).parent / "templates"
DEFAULT_LOCALE = "en"

ORDER_CONFIRMED = "order_confirmed"
ORDER_REJECTED = "order_rejected"
ORDER_DELAYED = "order_delayed"
ORDER_SHIPPED = "order_shipped"
ORDER_DELIVERED = "order_delivered"
TEMPLATES = (ORDER_CONFIRMED, ORDER_REJECTED, ORDER_DELAYED, ORDER_SHIPPED, ORDER_DELIVERED)


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
    """A notification decided on: what to say, to whom, in which language."""

    template: str
    recipient: str
    locale: str
    fields: dict[str, str]


@dataclass(frozen=True, slots=True)
class Rendered:
    locale: str  # the one actually used, after any fallback
    subject: str
    body: str


@dataclass(frozen=True, slots=True)
class Notification:
    """A rendered notification as it is stored and handed to a sink."""

    notification_id: str
    source_event_id: str
    order_id: str
    template: str
    locale: str
    recipient: str
    sink: str
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


def confirmation(event: OrderAccepted) -> Draft:
    who = recipient_of(event)
    return Draft(
        ORDER_CONFIRMED,
        who.address,
        who.locale,
        {
            **who.fields(),
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
    )


def delay(event: StockBackordered, who: Recipient) -> Draft:
    return Draft(
        ORDER_DELAYED,
        who.address,
        who.locale,
        {
            **who.fields(),
            "shortages": _shortages(event.shortages),
            "deadline": _when(event.deadline),
        },
    )


def shipped(event: ShipmentShipped, who: Recipient) -> Draft:
    return Draft(
        ORDER_SHIPPED,
        who.address,
        who.locale,
        {
            **who.fields(),
            "carrier": event.carrier,
            "tracking_number": event.tracking_number,
            "shipment_id": event.shipment_id,
        },
    )


def delivered(event: ShipmentDelivered, who: Recipient) -> Draft:
    return Draft(
        ORDER_DELIVERED, who.address, who.locale, {**who.fields(), "shipment_id": event.shipment_id}
    )


class TemplateBook:
    """Every template text by (locale, template name)."""

    def __init__(self, texts: Mapping[tuple[str, str], str]) -> None:
        self._texts = dict(texts)

    @classmethod
    def load(cls, root: Path = TEMPLATE_DIR) -> TemplateBook:
        return cls(
            {
                (path.parent.name, path.stem): path.read_text(encoding="utf-8")
                for path in root.glob("*/*.txt")
            }
        )

    def locales(self) -> set[str]:
        return {locale for locale, _ in self._texts}

    def names(self, locale: str) -> set[str]:
        return {name for loc, name in self._texts if loc == locale}

    def render(self, draft: Draft) -> Rendered:
        for locale in (draft.locale, DEFAULT_LOCALE):
            text = self._texts.get((locale, draft.template))
            if text is not None:
                break
        else:
            raise KeyError(f"no template {draft.template!r} in {draft.locale!r} nor in English")
        subject_template, _, body_template = text.partition("\n")
        # Subject and body are filled separately, so a value with a line break (a customer's
        # name) can never move text from the body into the subject, and the subject stays one
        # line (it becomes an e-mail header once there is an e-mail sink).
        subject = " ".join(subject_template.format_map(draft.fields).split())
        body = body_template.strip().format_map(draft.fields)
        return Rendered(locale, subject, body)


def _order_lines(lines: Iterable[OrderLine]) -> str:
    return "\n".join(f"  {line.quantity} x {line.sku}  {line.unit_price}" for line in lines)


def _shortages(shortages: Iterable[Shortage]) -> str:
    return "\n".join(f"  {s.sku} x {s.requested}" for s in shortages)


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
