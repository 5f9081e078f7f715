"""Sortable identifiers (UUIDv7, RFC 9562) for events, orders and shipments."""

from __future__ import annotations

import random
import threading
import time

_lock = threading.Lock()
_last_ms = 0
_counter = 0
# Ids need to be unique, not secret: a PRNG seeded from the OS is enough and ~5x cheaper than
# os.urandom per id (thousands are made per second on the hot path).
_random = random.Random()


def uuid7() -> str:
    """A UUIDv7 string: 48-bit Unix milliseconds, then a 12-bit counter and 62 random bits.

    The counter keeps ids created in the same millisecond by one process in creation order,
    so sorting event ids sorts them by when they happened.
    """
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            _counter += 1
            if _counter > 0xFFF:
                ms += 1
                _counter = 0
        else:
            _counter = 0
        _last_ms = ms
        counter = _counter
        rand = _random.getrandbits(62)
    h = f"{(ms << 80) | (0x7 << 76) | (counter << 64) | (0b10 << 62) | rand:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
