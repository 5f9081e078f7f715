"""Intake's settings: the shared ones plus channel keys, routing rules and the suspect window."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from shared.settings import ServiceSettings


class IntakeSettings(ServiceSettings):
    channel_keys_file: Path | None = Field(
        None,
        description="JSON file {'channels': {name: key}, 'operators': {...}} with the HTTP API "
        "keys (operators: shared/operators.py); default: credentials.json in the home folder",
    )
    channel_keys: dict[str, str] = Field(
        default_factory=dict,
        description="Channel keys as JSON ({name: key}), added to those of the keys file",
    )
    routing_rules_file: Path | None = Field(
        None, description="TOML routing rules; default: the routing.toml shipped with intake"
    )
    suspect_window_s: float = Field(
        24 * 3600,
        ge=0,
        description="Same customer and lines within this many seconds of another order: "
        "accepted but flagged for review (0 turns the check off)",
    )

    def keys_file(self) -> Path:
        return self.channel_keys_file or self.home / "credentials.json"
