"""Priority and routing as data: the rules of a TOML file, checked and compiled once at
start-up into plain sets and Decimals, so deciding an order is a short loop of lookups."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from shared.contracts.common import PRIORITIES

DEFAULT_RULES = Path(__file__).with_name("routing.toml")
REQUESTED = "requested"
NO_TIER = "none"
_CONDITIONS = {"channel", "tier", "urgency", "currency", "min_total", "max_total"}
_DECISION = {"name", "priority", "owner"}


class RoutingError(ValueError):
    """The rules file cannot be used; said at start-up, with the rule and the field."""


@dataclass(frozen=True, slots=True)
class Routing:
    priority: str
    rule: str
    owner: str


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    priority: str
    owner: str
    channels: frozenset[str] | None = None
    tiers: frozenset[str] | None = None
    urgencies: frozenset[str] | None = None
    currencies: frozenset[str] | None = None
    min_total: Decimal | None = None
    max_total: Decimal | None = None

    def matches_labels(self, channel: str, tier: str, urgency: str, currency: str) -> bool:
        return (
            (self.channels is None or channel in self.channels)
            and (self.tiers is None or tier in self.tiers)
            and (self.urgencies is None or urgency in self.urgencies)
            and (self.currencies is None or currency in self.currencies)
        )

    def matches_total(self, total: Decimal) -> bool:
        return (self.min_total is None or total >= self.min_total) and (
            self.max_total is None or total <= self.max_total
        )

    def explain(self) -> str:
        """The rule's conditions, for a person: why an order got its priority."""
        parts = []
        for label, values in (
            ("channel", self.channels),
            ("tier", self.tiers),
            ("urgency", self.urgencies),
            ("currency", self.currencies),
        ):
            if values is not None:
                parts.append(f"{label} in {sorted(values)}")
        if self.min_total is not None:
            parts.append(f"total >= {self.min_total}")
        if self.max_total is not None:
            parts.append(f"total <= {self.max_total}")
        return " and ".join(parts) or "every order"


# Memo sizes: the keys are channels, tiers, urgencies, currencies and account managers, few in
# practice; the bound only stops a directory of thousands of managers growing them for ever.
_MEMO_MAX = 10_000


class Router:
    """Decides in a few dictionary lookups: which rules an order's channel, tier, urgency and
    currency allow is worked out once per combination, leaving only the totals to compare."""

    def __init__(self, rules: list[Rule], fallback_owner: str) -> None:
        if not rules:
            raise RoutingError("no rules: at least one rule (a catch-all last) is needed")
        self.rules = rules
        self.fallback_owner = fallback_owner
        self.by_name = {rule.name: rule for rule in rules}
        self._candidates: dict[tuple[str, str, str, str], tuple[Rule, ...]] = {}
        self._decisions: dict[tuple[str, str, str, str, str | None], Routing] = {}

    def decide(
        self,
        *,
        channel: str,
        urgency: str,
        total: Decimal,
        currency: str,
        tier: str | None = None,
        account_manager: str | None = None,
    ) -> Routing:
        tier_name = tier or NO_TIER
        labels = (channel, tier_name, urgency, currency)
        candidates = self._candidates.get(labels)
        if candidates is None:
            candidates = tuple(r for r in self.rules if r.matches_labels(*labels))
            _remember(self._candidates, labels, candidates)
        for rule in candidates:
            if rule.matches_total(total):
                return self._decision(rule.name, channel, tier_name, urgency, account_manager)
        # No rule matched (the file lacks a catch-all): keep what the channel asked for.
        owner = _owner(self.fallback_owner, channel, tier_name, None) or "unassigned"
        return Routing(urgency, "(none)", owner)

    def _decision(
        self, rule_name: str, channel: str, tier: str, urgency: str, manager: str | None
    ) -> Routing:
        key = (rule_name, channel, tier, urgency, manager)
        found = self._decisions.get(key)
        if found is None:
            rule = self.by_name[rule_name]
            priority = urgency if rule.priority == REQUESTED else rule.priority
            owner = _owner(rule.owner, channel, tier, manager)
            if owner is None:
                owner = _owner(self.fallback_owner, channel, tier, None) or "unassigned"
            found = Routing(priority, rule.name, owner)
            _remember(self._decisions, key, found)
        return found

    @classmethod
    def from_file(cls, path: Path | None = None) -> Router:
        path = path or DEFAULT_RULES
        try:
            doc = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise RoutingError(f"cannot read routing rules from {path}: {exc}") from exc
        return cls.from_dict(doc, where=str(path))

    @classmethod
    def from_dict(cls, doc: dict[str, Any], where: str = "routing rules") -> Router:
        fallback = doc.get("fallback", {})
        if not isinstance(fallback, dict) or not isinstance(fallback.get("owner"), str):
            raise RoutingError(f'{where}: [fallback] needs owner = "..."')
        raw_rules = doc.get("rule", [])
        if not isinstance(raw_rules, list):
            raise RoutingError(f"{where}: rules are [[rule]] tables")
        rules = [_compile(raw, i, where) for i, raw in enumerate(raw_rules)]
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise RoutingError(f"{where}: rule names must be unique, got {names}")
        return cls(rules, _check_owner(fallback["owner"], where, "[fallback]"))


def _compile(raw: Any, index: int, where: str) -> Rule:
    if not isinstance(raw, dict):
        raise RoutingError(f"{where}: rule {index + 1} is not a table")
    name = raw.get("name")
    label = f"rule {index + 1} ({name!r})"
    if not isinstance(name, str) or not name:
        raise RoutingError(f"{where}: {label} needs a name")
    unknown = set(raw) - _CONDITIONS - _DECISION
    if unknown:
        raise RoutingError(f"{where}: {label} has unknown fields {sorted(unknown)}")
    priority = raw.get("priority", REQUESTED)
    if priority != REQUESTED and priority not in PRIORITIES:
        raise RoutingError(
            f"{where}: {label} priority must be {REQUESTED!r} or one of {list(PRIORITIES)}"
        )
    owner = raw.get("owner", "{account_manager}")
    if not isinstance(owner, str):
        raise RoutingError(f"{where}: {label} owner must be a string")
    urgencies = _names(raw, "urgency", label, where)
    if urgencies is not None and not urgencies <= set(PRIORITIES):
        raise RoutingError(f"{where}: {label} urgency must be among {list(PRIORITIES)}")
    return Rule(
        name=name,
        priority=priority,
        owner=_check_owner(owner, where, label),
        channels=_names(raw, "channel", label, where),
        tiers=_names(raw, "tier", label, where),
        urgencies=urgencies,
        currencies=_names(raw, "currency", label, where),
        min_total=_amount(raw, "min_total", label, where),
        max_total=_amount(raw, "max_total", label, where),
    )


def _names(raw: dict[str, Any], key: str, label: str, where: str) -> frozenset[str] | None:
    if key not in raw:
        return None
    value = raw[key]
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise RoutingError(f"{where}: {label} {key} must be a non-empty list of strings")
    return frozenset(value)


def _amount(raw: dict[str, Any], key: str, label: str, where: str) -> Decimal | None:
    if key not in raw:
        return None
    value = raw[key]
    # Amounts are strings, as everywhere money is written down in orderflow: a TOML float
    # would already have lost the exact value.
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise RoutingError(f'{where}: {label} {key} must be a decimal string like "5000.00"')
    try:
        amount = Decimal(str(value))
    except InvalidOperation as exc:
        raise RoutingError(f"{where}: {label} {key} {value!r} is not a decimal") from exc
    if not amount.is_finite():
        raise RoutingError(f"{where}: {label} {key} must be finite")
    return amount


def _check_owner(template: str, where: str, label: str) -> str:
    try:
        template.format(account_manager="x", channel="x", tier="x")
    except (KeyError, IndexError, ValueError) as exc:
        raise RoutingError(
            f"{where}: {label} owner {template!r} may use only "
            "{account_manager}, {channel} and {tier}"
        ) from exc
    return template


def _remember(memo: dict[Any, Any], key: Any, value: Any) -> None:
    if len(memo) >= _MEMO_MAX:
        memo.clear()
    memo[key] = value


def _owner(template: str, channel: str, tier: str, account_manager: str | None) -> str | None:
    if "{account_manager}" in template and not account_manager:
        return None
    return template.format(account_manager=account_manager or "", channel=channel, tier=tier)
