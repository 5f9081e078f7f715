"""Channel adapters: each channel's own payload, mapped to the canonical order (OrderSubmission).

A channel's module says how to recognise its native payload and how to map it; every channel
may also send the canonical web JSON, which passes through untouched (so a channel can move to
the canonical shape without a flag day). An adapter never raises and never decides validity:
it reports problems only it can see (a price that is not a whole number of fen, an item line it
cannot read) and leaves the rest to the canonical validation, whose field paths it translates
back into its own, so the sender is told about the fields it actually sent.

Adding a channel: a module with ``CHANNEL``, ``recognises(doc)``, ``to_canonical(doc)`` and
``PATHS``, listed in ``_MODULES`` below, plus a test with a fixture of its payload.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from services.intake.channels import marketplace, phone, wechat
from services.intake.channels.reading import Mapped


@dataclass(frozen=True, slots=True)
class ChannelAdapter:
    channel: str
    recognises: Callable[[dict[str, Any]], bool]
    to_canonical: Callable[[dict[str, Any]], Mapped]


# One line per channel with a payload of its own.
_MODULES: tuple[ModuleType, ...] = (wechat, phone, marketplace)

ADAPTERS: dict[str, ChannelAdapter] = {
    m.CHANNEL: ChannelAdapter(m.CHANNEL, m.recognises, m.to_canonical) for m in _MODULES
}


def to_canonical(channel: str, doc: dict[str, Any]) -> Mapped:
    """The canonical reading of a channel's payload (the canonical JSON maps to itself)."""
    adapter = ADAPTERS.get(channel)
    if adapter is not None and adapter.recognises(doc):
        return adapter.to_canonical(doc)
    return Mapped(doc)


__all__ = ["ADAPTERS", "ChannelAdapter", "Mapped", "to_canonical"]
