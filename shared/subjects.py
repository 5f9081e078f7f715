"""Every NATS subject orderflow uses, built in one place.

Event subjects are ``orderflow.<producer>.<event_type>.<key>``: they end with the key (an order
id or a SKU) so one order's whole history can be read from the streams with a subject filter
such as ``orderflow.*.*.<order_id>``.
"""

from __future__ import annotations

import re

PREFIX = "orderflow"

INTAKE = "intake"
INVENTORY = "inventory"
FULFILLMENT = "fulfillment"
NOTIFY = "notify"
SERVICES = (INTAKE, INVENTORY, FULFILLMENT, NOTIFY)


def event(producer: str, event_type: str, key: str) -> str:
    return f"{PREFIX}.{producer}.{event_type}.{_token(key)}"


def events_of(producer: str, event_type: str = "*") -> str:
    """Wildcard for one producer's events (optionally one type)."""
    return f"{PREFIX}.{producer}.{event_type}.*"


def all_events_of(producer: str) -> str:
    return f"{PREFIX}.{producer}.>"


def submission(channel: str) -> str:
    """Where a channel publishes its orders (captured by the SUBMISSIONS stream)."""
    return f"{PREFIX}.submit.{_token(channel)}"


SUBMISSIONS_ALL = f"{PREFIX}.submit.*"


def channel_of_submission(subject: str) -> str:
    return subject.rsplit(".", 1)[-1]


def dead_letter(service: str, consumer: str) -> str:
    return f"{PREFIX}.dlq.{service}.{consumer}"


DEAD_LETTERS_ALL = f"{PREFIX}.dlq.>"


def rpc(service: str, command: str) -> str:
    """Request/reply subject of a service command (core NATS, answered by any replica)."""
    return f"{PREFIX}.rpc.{service}.{command}"


def rpc_all(service: str) -> str:
    return f"{PREFIX}.rpc.{service}.*"


# What may not appear in a token: dots, wildcards and whitespace would change a subject's meaning.
_NOT_IN_A_TOKEN = re.compile(r"[.*>\s]")


def _token(value: str) -> str:
    # One regex search, not a scan per character: this runs for every event published.
    if not value or _NOT_IN_A_TOKEN.search(value):
        raise ValueError(f"not usable as a subject token: {value!r}")
    return value
