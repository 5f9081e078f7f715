"""The in-process batch benchmark (orderflow/bench/batch.py) applies real batches: every message
it offers ends up in the consumer's inbox, for each service it covers."""

from __future__ import annotations

import pytest

from orderflow.bench.batch import CONSUMERS, measure


@pytest.mark.parametrize("service", sorted(CONSUMERS))
async def test_every_offered_message_is_applied(service: str) -> None:
    result = await measure(service, batch=3, batches=2, warmup=1)
    assert result.applied == 3 * (2 + 1)
    assert result.cpu_s > 0
    assert result.us_per_message > 0
