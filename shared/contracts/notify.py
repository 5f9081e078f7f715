"""Events notify produces."""

from __future__ import annotations

from pydantic import Field

from shared import subjects
from shared.contracts.envelope import Event, register


@register
class NotificationSent(Event):
    event_type = "notification_sent"
    producer = subjects.NOTIFY
    notification_id: str
    order_id: str
    template: str = Field(description="e.g. order_confirmed, shipped")
    recipient: str = Field(description="Where it went: an e-mail, a phone, a channel")
    sink: str = Field(description="log, webhook, email")
    source_event_id: str = Field(description="The event this notification answers")

    def key(self) -> str:
        return self.order_id
