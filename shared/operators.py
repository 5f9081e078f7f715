"""Operators: the people who act through the CLI and the HTTP APIs, each with a token that
carries a role. Every command checks the role and records the operator as the actor.

Tokens are configuration, never code: ``ORDERFLOW_OPERATORS`` (JSON) and the ``"operators"``
section of ``ORDERFLOW_OPERATORS_FILE`` (default ``$ORDERFLOW_HOME/credentials.json``), each
``{name: {"role": role, "token_sha256": hex}}``. ``"token"`` (the token itself) may stand in for
``"token_sha256"`` where the file is the operator's own (the embedded default); a bare string is
an admin's token (how credentials.json looked before roles). Tokens are looked up by their
SHA-256, so the lookup time says nothing about how much of a guessed token was right, and a
server's configuration need not hold the tokens themselves.

Who may do what is one table for the whole system, so it can be read and reviewed in one place.
A command not in the table is for admins only: a new command is closed until someone opens it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SALES, WAREHOUSE, FINANCE, ADMIN = "sales", "warehouse", "finance", "admin"
ROLES = (SALES, WAREHOUSE, FINANCE, ADMIN)
# Looking is every operator's: the warehouse must see an order's status, sales its shipments.
ANYONE = frozenset(ROLES)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,47}$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
MIN_TOKEN_LENGTH = 16


def _only(*roles: str) -> frozenset[str]:
    return frozenset({*roles, ADMIN})


# service -> command -> the roles that may run it (admin may run everything).
PERMISSIONS: dict[str, dict[str, frozenset[str]]] = {
    "intake": {
        "submit": _only(SALES),
        "submit_batch": _only(SALES),
        "cancel": _only(SALES),
        "customer_set": _only(SALES),
        "status": ANYONE,
        "list": ANYONE,
        "customer_show": ANYONE,
        "rules": ANYONE,
        # Tracing an order is a read; reconciliation facts and reports are finance's.
        "trace": ANYONE,
        "audit_orders": _only(FINANCE),
        "audit_facts": _only(FINANCE),
        "report": _only(FINANCE),
    },
    "inventory": {
        "restock": _only(WAREHOUSE),
        "adjust": _only(WAREHOUSE),
        "transfer": _only(WAREHOUSE),
        "reorder": _only(WAREHOUSE),
        "warehouse": _only(WAREHOUSE),
        "stock": ANYONE,
        "ledger": ANYONE,
        "forecast": ANYONE,
        "warehouses": ANYONE,
        # Tracing an order is a read; reconciliation facts and reports are finance's.
        "trace": ANYONE,
        "audit_orders": _only(FINANCE),
        "audit_facts": _only(FINANCE),
        "report": _only(FINANCE),
        "audit_stock": _only(FINANCE),
    },
    "fulfillment": {
        "pick": _only(WAREHOUSE),
        "pack": _only(WAREHOUSE),
        "ship": _only(WAREHOUSE),
        "deliver": _only(WAREHOUSE),
        "delivery-failed": _only(WAREHOUSE),
        "receive-return": _only(WAREHOUSE),
        # Accepting a return commits the business to a refund.
        "return": _only(SALES, FINANCE),
        "queue": ANYONE,
        "shipments": ANYONE,
        # Tracing an order is a read; reconciliation facts and reports are finance's.
        "trace": ANYONE,
        "audit_orders": _only(FINANCE),
        "audit_facts": _only(FINANCE),
        "report": _only(FINANCE),
    },
    "notify": {
        "resend": _only(SALES),
        "notifications": ANYONE,
        "failed_deliveries": ANYONE,
        "delivery_attempts": ANYONE,
        # Tracing an order is a read; reconciliation facts and reports are finance's.
        "trace": ANYONE,
        "audit_orders": _only(FINANCE),
        "audit_facts": _only(FINANCE),
    },
}


def roles_for(service: str, command: str) -> frozenset[str]:
    return PERMISSIONS.get(service, {}).get(command, frozenset({ADMIN}))


def records_actor(service: str, command: str) -> bool:
    """Whether the command changes something, so its request's ``actor`` is the operator's.
    Reads (open to everyone) and commands missing from the table get their payload as sent."""
    roles = PERMISSIONS.get(service, {}).get(command)
    return roles is not None and roles != ANYONE


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class OperatorsError(ValueError):
    """The operators' configuration cannot be used (said at start-up, not at the first call)."""


class NotAllowed(Exception):
    """The caller is not an operator, or its role may not run the command."""

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status  # 401 (who are you?) or 403 (not with that role)


@dataclass(frozen=True, slots=True)
class Operator:
    name: str
    role: str

    def may(self, roles: Iterable[str]) -> bool:
        return self.role == ADMIN or self.role in roles

    def actor(self, on_behalf_of: Any = None) -> str:
        """How the change is recorded: the operator the token names, and the person it acted
        for when the request says so (a shared terminal's token used by one of the staff)."""
        who = f"operator:{self.name}"
        given = str(on_behalf_of).strip() if on_behalf_of is not None else ""
        if given and given not in (self.name, who):
            who = f"{who}/{given}"
        return who[:64]


class Operators:
    def __init__(self, entries: Mapping[str, Any] | None = None) -> None:
        self._by_digest: dict[str, Operator] = {}
        self.add(entries or {}, "ORDERFLOW_OPERATORS")

    def __len__(self) -> int:
        return len(self._by_digest)

    @property
    def digests(self) -> frozenset[str]:
        return frozenset(self._by_digest)

    def add(self, entries: Mapping[str, Any], source: str) -> None:
        if not isinstance(entries, Mapping):
            raise OperatorsError(
                f"{source}: operators must be {{name: {{'role', 'token_sha256'}}}}"
            )
        for name, entry in entries.items():
            operator, digest = _parse(name, entry, source)
            known = self._by_digest.get(digest)
            if known is not None and known != operator:
                raise OperatorsError(f"{source}: operator {name!r} shares its token with another")
            self._by_digest[digest] = operator

    def add_file(self, path: Path) -> None:
        """The ``"operators"`` section of a credentials file, if the file exists."""
        try:
            doc: Any = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise OperatorsError(f"cannot read operators from {path}: {exc}") from exc
        if not isinstance(doc, dict):
            raise OperatorsError(f"{path} must hold a JSON object with an 'operators' section")
        self.add(doc.get("operators") or {}, str(path))

    @classmethod
    def configured(cls, entries: Mapping[str, Any], files: Iterable[Path]) -> Operators:
        operators = cls(entries)
        for path in dict.fromkeys(p.resolve() for p in files):
            operators.add_file(path)
        if not operators:
            log.warning(
                "no operator tokens configured (ORDERFLOW_OPERATORS, credentials.json): "
                "every command will be refused"
            )
        return operators

    def identify(self, token: str | None) -> Operator | None:
        if not token:
            return None
        return self._by_digest.get(token_digest(token))

    def check(self, token: str | None, service: str, command: str) -> Operator:
        """The operator a token names, if its role may run ``command`` on ``service``."""
        if token is None:
            raise NotAllowed(
                f"{service} {command!r} needs an operator token: pass --token or set "
                "ORDERFLOW_TOKEN (next to `orderflow up` the CLI uses the admin token in "
                "$ORDERFLOW_HOME/credentials.json)",
                401,
            )
        operator = self.identify(token)
        if operator is None:
            raise NotAllowed(f"{service} does not know this operator token", 401)
        allowed = roles_for(service, command)
        if not operator.may(allowed):
            raise NotAllowed(
                f"operator {operator.name!r} has the role {operator.role}; {command!r} on "
                f"{service} needs the role {' or '.join(r for r in ROLES if r in allowed)}",
                403,
            )
        return operator


def _parse(name: Any, entry: Any, source: str) -> tuple[Operator, str]:
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise OperatorsError(f"{source}: {name!r} is not a valid operator name")
    if isinstance(entry, str):
        entry = {"role": ADMIN, "token": entry}
    if not isinstance(entry, Mapping):
        raise OperatorsError(f"{source}: operator {name!r} must be {{'role', 'token_sha256'}}")
    role = entry.get("role")
    if role not in ROLES:
        raise OperatorsError(
            f"{source}: operator {name!r} has role {role!r}; roles are {', '.join(ROLES)}"
        )
    token, digest = entry.get("token"), entry.get("token_sha256")
    if token is not None:
        if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
            raise OperatorsError(
                f"{source}: the token of operator {name!r} is shorter than {MIN_TOKEN_LENGTH}"
            )
        digest = token_digest(token)
    elif not isinstance(digest, str) or not SHA256_HEX.fullmatch(digest.lower()):
        raise OperatorsError(
            f"{source}: operator {name!r} needs 'token_sha256' (64 hex digits) or 'token'"
        )
    return Operator(name, role), digest.lower()
