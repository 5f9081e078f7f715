"""Event and order ids: UUIDv7, sortable by when they were made."""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace

import pytest

from shared import ids
from shared.ids import uuid7


def test_ids_are_uuid_version_7_with_the_rfc_variant() -> None:
    for _ in range(100):
        parsed = uuid.UUID(uuid7())
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122


def test_ids_carry_the_time_they_were_made() -> None:
    before = time.time_ns() // 1_000_000
    made = uuid.UUID(uuid7()).int >> 80
    after = time.time_ns() // 1_000_000
    # The counter may push an id at most a few milliseconds ahead under a burst.
    assert before <= made <= after + 5


def test_ids_sort_in_creation_order() -> None:
    made = [uuid7() for _ in range(20_000)]
    assert len(set(made)) == len(made)
    assert sorted(made) == made


def test_ids_sort_in_creation_order_within_one_millisecond_and_past_its_counter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    frozen_ns = time.time_ns()
    monkeypatch.setattr(ids, "time", SimpleNamespace(time_ns=lambda: frozen_ns))
    # More than the 12-bit counter holds: the id borrows the next millisecond and stays ordered.
    made = [uuid7() for _ in range(5_000)]
    assert len(set(made)) == len(made)
    assert sorted(made) == made
    assert len({uuid.UUID(m).int >> 80 for m in made}) >= 2


def test_ids_stay_ordered_when_the_clock_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    first = uuid7()
    an_hour_ago = time.time_ns() - 3600 * 10**9
    monkeypatch.setattr(ids, "time", SimpleNamespace(time_ns=lambda: an_hour_ago))
    later = [uuid7() for _ in range(10)]
    assert sorted([first, *later]) == [first, *later]
