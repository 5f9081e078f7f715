"""Intake's rules: reading a submission, recognising look-alike orders, how an order's status
moves, and when it may still be cancelled. No I/O here."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from pydantic import ValidationError

from services.intake import channels
from shared.contracts.common import Customer, FieldError
from shared.contracts.intake import MAX_SUBMISSION_BYTES, OrderSubmission

# Stages an order passes, in order; the status view never moves backwards. Cancelled is final:
# fulfillment only cancels what has not shipped, and a late "reserved" must not revive it.
STATUS_RANK: dict[str, int] = {
    "accepted": 10,
    "backordered": 20,
    "reserved": 30,
    "queued": 40,
    "picked": 50,
    "packed": 60,
    "shipped": 70,
    "delivered": 80,
    "cancelled": 100,
}
# Past these the parcel has left (or the order is gone): intake refuses a cancel at once.
TOO_LATE_TO_CANCEL = frozenset({"shipped", "delivered", "cancelled"})


@dataclass(frozen=True, slots=True)
class Reading:
    """What a submission turned out to be: an order, or every problem with it."""

    submission: OrderSubmission | None
    errors: list[FieldError]
    external_id: str | None = None
    # False when the bytes are not even a JSON object: the raw payload is kept as a dead letter.
    parseable: bool = True

    @property
    def outcome(self) -> OrderSubmission | list[FieldError]:
        return self.submission if self.submission is not None else self.errors


def read(raw: bytes, channel: str) -> Reading:
    """Parse, map from the channel's own shape, and validate; every problem at once."""
    if len(raw) > MAX_SUBMISSION_BYTES:
        error = f"submission is {len(raw)} bytes; at most {MAX_SUBMISSION_BYTES}"
        return Reading(None, [FieldError(field="(body)", reason=error)], parseable=False)
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        error = f"not valid JSON: {exc}"
        return Reading(None, [FieldError(field="(body)", reason=error)], parseable=False)
    if not isinstance(doc, dict):
        error = "a submission must be a JSON object"
        return Reading(None, [FieldError(field="(body)", reason=error)], parseable=False)
    return read_document(doc, channel)


def read_document(doc: dict[str, Any], channel: str) -> Reading:
    adapter = channels.ADAPTERS.get(channel)
    if adapter is None or not adapter.recognises(doc):
        # The canonical JSON (the hot path): validated as it is, nothing to translate.
        canonical = validate_submission(doc, channel)
        if isinstance(canonical, OrderSubmission):
            return Reading(canonical, [], canonical.external_id)
        return Reading(None, canonical, external_id_of(doc))
    mapped = adapter.to_canonical(doc)
    outcome = validate_submission(mapped.doc, channel)
    if isinstance(outcome, OrderSubmission) and not mapped.errors:
        return Reading(outcome, [], outcome.external_id)
    errors = mapped.native_errors(outcome if isinstance(outcome, list) else [])
    return Reading(None, errors, external_id_of(mapped.doc))


def read_submission(raw: bytes, channel: str) -> OrderSubmission | list[FieldError]:
    return read(raw, channel).outcome


def validate_submission(doc: dict[str, Any], channel: str) -> OrderSubmission | list[FieldError]:
    doc.setdefault("channel", channel)
    errors: list[FieldError] = []
    if doc.get("channel") != channel:
        errors.append(
            FieldError(
                field="channel",
                reason=f"submitted on channel {channel!r} but says {doc.get('channel')!r}",
            )
        )
    errors.extend(_line_total_errors(doc.get("lines")))
    try:
        submission = OrderSubmission.model_validate(doc)
    except ValidationError as exc:
        return errors + field_errors(exc)
    return errors or submission


def _line_total_errors(lines: Any) -> list[FieldError]:
    """A line may state its own total; if it does, it must be quantity x unit price."""
    if not isinstance(lines, list):
        return []
    errors = []
    for i, line in enumerate(lines):
        if not isinstance(line, dict) or "line_total" not in line:
            continue
        try:
            quantity, unit = line.get("quantity"), Decimal(str(line.get("unit_price")))
            stated = Decimal(str(line["line_total"]))
            if not isinstance(quantity, int) or not unit.is_finite() or not stated.is_finite():
                continue  # the quantity or price error is reported on its own field
            if unit * quantity != stated:
                reason = f"{stated} is not {quantity} x {unit} = {unit * quantity}"
                errors.append(FieldError(field=f"lines.{i}.line_total", reason=reason))
        except (InvalidOperation, ArithmeticError):
            errors.append(FieldError(field=f"lines.{i}.line_total", reason="not a decimal amount"))
    return errors


# What a value of each patterned field must look like, said for a person rather than as the
# regular expression pydantic would quote.
PATTERN_REASONS = {
    "email": "is not an e-mail address",
    "phone": "is not a phone number (digits, with an optional +, spaces, dashes, brackets)",
    "sku": "is not a SKU (3-32 upper-case letters, digits and dashes, e.g. TEA-001)",
    "country": "is not a two-letter ISO country code (e.g. CN)",
    "currency": "is not a three-letter currency code (e.g. CNY)",
    "postal_code": "is not a postal code (2-12 letters, digits, spaces, dashes)",
    "external_id": "is not a reference (1-64 letters, digits, _, :, -)",
    "channel": "is not a channel name",
    "locale": "is not a locale (e.g. en, zh-CN)",
}


def field_errors(exc: ValidationError) -> list[FieldError]:
    out = []
    for err in exc.errors(include_url=False):
        path = ".".join(str(p) for p in err["loc"]) or "(order)"
        reason = err["msg"].removeprefix("Value error, ")
        if err["type"] == "string_pattern_mismatch":
            said = PATTERN_REASONS.get(str(err["loc"][-1]))
            if said is not None:
                reason = f"{str(err['input'])[:60]!r} {said}"
        out.append(FieldError(field=path, reason=reason))
    return out


def external_id_of(raw_doc: Any) -> str | None:
    """The channel's reference, if it can be read from an invalid submission (for the answer)."""
    if isinstance(raw_doc, dict):
        value = raw_doc.get("external_id")
        if isinstance(value, str) and 0 < len(value) <= 64:
            return value
    return None


_INDEX = re.compile(r"\.\d+(?=\.|$)")


def error_label(field: str) -> str:
    """A field path with its list indexes folded (lines.3.sku -> lines.*.sku): a bounded metric
    label for "rejections by reason"."""
    return _INDEX.sub(".*", field)[:64]


def customer_key(customer: Customer) -> str:
    """Who the customer is across channels: the e-mail address, else the phone's digits."""
    # A valid Customer has an e-mail or a phone of at least six digits.
    return customer_key_of(customer.email or customer.phone or "") or "unknown"


def customer_key_of(text: str) -> str | None:
    """The directory key of an e-mail address or a phone number (None if it is neither)."""
    text = text.strip()
    if "@" in text:
        return text.lower()
    digits = "".join(c for c in text if c.isdigit())
    return f"tel:{digits}" if len(digits) >= 5 else None


def fingerprint(customer: str, submission: OrderSubmission) -> str:
    """Same customer, same SKUs and quantities (in any order): the mark of an order that may
    have been taken twice, on two channels or by two people."""
    lines = sorted(f"{line.sku}x{line.quantity}" for line in submission.lines)
    return hashlib.blake2b("|".join([customer, *lines]).encode(), digest_size=16).hexdigest()


# The status view's timeline: which stage each timestamp column records, and which service's
# event set it.
STAGES: tuple[tuple[str, str, str], ...] = (
    ("submitted_at", "submitted", "channel"),
    ("accepted_at", "accepted", "intake"),
    ("backordered_at", "backordered", "inventory"),
    ("reserved_at", "reserved", "inventory"),
    ("queued_at", "queued", "fulfillment"),
    ("picked_at", "picked", "fulfillment"),
    ("packed_at", "packed", "fulfillment"),
    ("shipped_at", "shipped", "fulfillment"),
    ("delivered_at", "delivered", "fulfillment"),
    ("cancel_requested_at", "cancel requested", "intake"),
    ("cancel_refused_at", "cancellation refused", "fulfillment"),
    ("cancelled_at", "cancelled", "fulfillment"),
)


def timeline(row: dict[str, Any]) -> list[dict[str, Any]]:
    """What happened to an order, when (epoch seconds), and which service said so, in order."""
    details = {
        "submitted": f"on channel {row['channel']} as {row['external_id']}",
        "accepted": _accepted_detail(row),
        "cancel requested": _joined(row.get("cancel_actor"), row.get("cancel_reason")),
        "cancellation refused": row.get("cancel_refused_reason"),
        "cancelled": row.get("cancelled_reason"),
    }
    entries = []
    for column, what, by in STAGES:
        at = row.get(column)
        if at is None:
            continue
        entry: dict[str, Any] = {"at": at, "what": what, "by": by}
        detail = details.get(what)
        if detail:
            entry["detail"] = detail
        entries.append(entry)
    entries.sort(key=lambda e: e["at"])
    return entries


def _accepted_detail(row: dict[str, Any]) -> str:
    parts = [f"priority {row['priority']}"]
    if row.get("priority_rule"):
        parts.append(f"by rule {row['priority_rule']!r}")
    if row.get("owner"):
        parts.append(f"owner {row['owner']}")
    if row.get("suspected_duplicate_of"):
        parts.append("flagged for review: looks like " + ", ".join(row["suspected_duplicate_of"]))
    return "; ".join(parts)


def _joined(*parts: Any) -> str | None:
    found = [str(p) for p in parts if p]
    return ": ".join(found) if found else None
