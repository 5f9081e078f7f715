"""Events notify produces."""

from __future__ import annotations

from pydantic import Field

from shared import subjects
from shared.contracts.envelope import Event, register


@register
class NotificationSent(Event):
    """A sink took a notification about an order (one event per sink that delivered it)."""

    event_type = "notification_sent"
    producer = subjects.NOTIFY
    notification_id: str
    order_id: str
    template: str = Field(description="e.g. order_confirmed, shipped")
    recipient: str = Field(description="Where it went: an e-mail, a phone, a channel")
    sink: str = Field(description="log, webhook, email, or a configured webhook's name")
    source_event_id: str = Field(description="The event this notification answers")
    # Added in v1 as optional fields (a non-breaking change).
    delivery_id: str | None = Field(None, description="The delivery (one per sink) that was sent")
    attempts: int | None = Field(None, description="Attempts it took, this one included")

    def key(self) -> str:
        return self.order_id


@register
class NotificationFailed(Event):
    """An operations alert: a sink kept failing and notify gave the delivery up. Nothing is
    retried by itself any more; an operator can send it again (``orderflow notifications
    resend``)."""

    event_type = "notification_failed"
    producer = subjects.NOTIFY
    delivery_id: str
    notification_id: str
    order_id: str | None = Field(None, description="The order, when the message was about one")
    template: str
    recipient: str
    sink: str
    address: str = Field(description="Where the sink tried to send it")
    attempts: int
    error: str = Field(description="The last attempt's error")
    source_event_id: str

    def key(self) -> str:
        # An alert about no order still needs a key that ends its subject.
        return self.order_id or self.notification_id
