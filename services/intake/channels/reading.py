"""Reading a channel's untrusted JSON: the mapped result, and small readers that never raise."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from shared.contracts.common import FieldError


@dataclass(frozen=True, slots=True)
class Mapped:
    """A native payload read into the canonical shape, with the problems found on the way."""

    doc: dict[str, Any]
    errors: list[FieldError] = field(default_factory=list)
    paths: Mapping[str, str] = field(default_factory=dict)
    # Canonical fields whose problem the adapter has already reported in its own terms.
    covered: frozenset[str] = frozenset()
    # Where canonical line i came from, when lines the adapter could not read were left out.
    line_numbers: tuple[int, ...] | None = None

    def native_errors(self, canonical: list[FieldError]) -> list[FieldError]:
        """The adapter's own findings, then the canonical ones in the channel's terms."""
        out = list(self.errors)
        for err in canonical:
            if err.field in self.covered:
                continue
            out.append(FieldError(field=self.native_path(err.field), reason=err.reason))
        return out

    def native_path(self, canonical: str) -> str:
        if self.line_numbers is not None and canonical.startswith("lines."):
            head, _, rest = canonical.removeprefix("lines.").partition(".")
            if head.isdigit() and int(head) < len(self.line_numbers):
                canonical = ".".join(
                    p for p in ("lines", str(self.line_numbers[int(head)]), rest) if p
                )
        return translate(canonical, self.paths)


def translate(canonical: str, paths: Mapping[str, str]) -> str:
    """A canonical field path in a channel's own terms: the longest rule whose pattern (``*``
    stands for a list index) matches a prefix of the path wins; the rest of the path follows."""
    if not paths:
        return canonical
    tokens = canonical.split(".")
    for end in range(len(tokens), 0, -1):
        head = tokens[:end]
        pattern = ".".join("*" if t.isdigit() else t for t in head)
        native = paths.get(pattern)
        if native is None:
            continue
        indexes = iter(t for t in head if t.isdigit())
        out = [next(indexes, "0") if t == "*" else t for t in native.split(".")]
        return ".".join(out + tokens[end:]) if native else ".".join(tokens[end:])
    return canonical


# Small readers every adapter uses on untrusted JSON: they never raise, they return None.


def obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def text(value: Any) -> str | None:
    """A non-empty string (numbers are accepted: form tools send postcodes as numbers)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        value = str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def amount(value: Any) -> Any:
    """A decimal amount as sent: text stays text (so 12.50 keeps its two places), anything
    else goes on for the canonical validation to accept or name."""
    if isinstance(value, str):
        return value.strip() or None
    return value


def minor_units(value: Any, exponent: int = 2) -> str | None:
    """An integer amount in minor units (fen, cents) as a decimal string; None if it is not
    an integer (the caller reports that in the channel's own terms)."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    if abs(value) >= 10**18:
        return str(value)  # far past any price: the canonical bounds name it
    return str((Decimal(value) / (10**exponent)).quantize(Decimal(1).scaleb(-exponent)))


def put(doc: dict[str, Any], key: str, value: Any) -> None:
    """Set a field only when there is something to set, so that the canonical validation
    reports a missing field as missing rather than as the wrong type."""
    if value is not None:
        doc[key] = value
