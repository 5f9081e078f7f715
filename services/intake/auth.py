"""Who is calling intake's HTTP API: a channel (submits and sees only its own orders) or an
operator (sees every order; acts as its role allows, shared/operators.py). Keys come from
configuration, never from code.

Keys are looked up by their SHA-256, so the lookup time says nothing about how much of a guessed
key was right.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from shared.operators import Operators, bearer_token

log = logging.getLogger(__name__)

CHANNEL_NAME = re.compile(r"^[a-z][a-z0-9_-]{1,31}$")
MIN_KEY_LENGTH = 16


class KeysError(ValueError):
    """The keys configuration cannot be used (said at start-up, not at the first request)."""


@dataclass(frozen=True, slots=True)
class Principal:
    kind: Literal["channel", "operator"]
    name: str
    role: str | None = None  # an operator's

    @property
    def actor(self) -> str:
        return f"{self.kind}:{self.name}"

    def may_see(self, channel: str) -> bool:
        return self.kind == "operator" or self.name == channel


class ApiKeys:
    def __init__(self, channels: dict[str, str], operators: Operators | None = None) -> None:
        self.operators = operators or Operators()
        self._by_digest: dict[bytes, Principal] = {}
        for name, key in channels.items():
            if not CHANNEL_NAME.fullmatch(name):
                raise KeysError(f"channel name {name!r} is not a valid channel name")
            if not isinstance(key, str) or len(key) < MIN_KEY_LENGTH:
                raise KeysError(f"the key of channel {name!r} is shorter than {MIN_KEY_LENGTH}")
            digest = _digest(key)
            if digest in self._by_digest or digest.hex() in self.operators.digests:
                raise KeysError(f"channel {name!r} shares its key with another")
            self._by_digest[digest] = Principal("channel", name)

    @property
    def channels(self) -> list[str]:
        return sorted(p.name for p in self._by_digest.values())

    def __len__(self) -> int:
        return len(self._by_digest) + len(self.operators)

    def principal(self, authorization: str | None) -> Principal | None:
        """The caller named by an ``Authorization: Bearer <key>`` header, or None."""
        key = bearer_token(authorization)
        if key is None:
            return None
        channel = self._by_digest.get(_digest(key))
        if channel is not None:
            return channel
        operator = self.operators.identify(key)
        return None if operator is None else Principal("operator", operator.name, operator.role)

    @classmethod
    def load(
        cls, keys_file: Path, extra_channels: dict[str, str], operators: Operators | None = None
    ) -> ApiKeys:
        """Channel keys from ``keys_file`` and the settings; operators as configured for every
        service (the caller adds the keys file's ``"operators"`` section to them)."""
        channels: dict[str, str] = {}
        if keys_file.exists():
            try:
                doc: Any = json.loads(keys_file.read_text())
            except (OSError, ValueError) as exc:
                raise KeysError(f"cannot read channel keys from {keys_file}: {exc}") from exc
            if not isinstance(doc, dict) or not isinstance(doc.get("channels", {}), dict):
                raise KeysError(f"{keys_file} must hold {{'channels': {{name: key}}}}")
            channels.update(doc.get("channels", {}))
        channels.update(extra_channels)
        keys = cls(channels, operators)
        if not keys:
            log.warning(
                "no channel keys configured (%s is missing and ORDERFLOW_CHANNEL_KEYS is empty): "
                "every HTTP request to /orders will get 401",
                keys_file,
            )
        return keys


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()
