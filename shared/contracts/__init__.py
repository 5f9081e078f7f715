"""Wire contracts: one module per producing service. Importing this registers every event."""

from shared.contracts import fulfillment, intake, inventory, notify
from shared.contracts.common import FieldError
from shared.contracts.envelope import (
    REGISTRY,
    Envelope,
    Event,
    UnknownEvent,
    decode_envelope,
    new_envelope,
)

__all__ = [
    "REGISTRY",
    "Envelope",
    "Event",
    "FieldError",
    "UnknownEvent",
    "decode_envelope",
    "fulfillment",
    "intake",
    "inventory",
    "new_envelope",
    "notify",
]
