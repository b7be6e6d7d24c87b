"""Memory back to the OS after connections end.

CPython keeps what a closed connection freed: small objects go back to pymalloc's arenas, and
an arena is returned only when every object in it is gone; larger buffers go back to glibc's
malloc, which keeps freed memory inside its heaps until something trims them. After 10,000
clients left, python-ws stayed at its peak (7.3x its idle RSS 5 s later; bench/README.md, "Memory
coming back"). So once a wave of disconnects is over (at least `MIN_ENDED` connections ended and
none for `QUIET_SECS`, or `MAX_WAIT_SECS` of steady churn), the hub runs a full `gc.collect()`
(Tornado's handlers, streams and futures hold reference cycles, so some of a connection only goes
at a full collection) and then glibc's `malloc_trim(0)`, which returns the free pages of every
heap. Once per wave: after 10,000 connections the collection takes 1.0-1.8 s (380,000-490,000
objects; work the next full collection under load would otherwise do) and the trim about 10 ms.

On a libc without `malloc_trim` (musl, macOS) only the collection runs.

Twin: rust-ws/src/reclaim.rs (each worker collects its mimalloc heap once connections ended)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import time
from collections.abc import Callable

log = logging.getLogger("python_ws")

# At least this many connections ended since the last reclaim...
MIN_ENDED = 256
# ...and none for this long (the wave is over),
QUIET_SECS = 1.0
# ...or the first of them this long ago (churn that never pauses).
MAX_WAIT_SECS = 30.0


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


class Reclaimer:
    """Counts ended connections and, once a wave of them is over, collects and trims."""

    def __init__(self, call_later: Callable[[float, Callable[[], None]], object]) -> None:
        self._call_later = call_later
        self._trim = _malloc_trim()
        self.ended = 0
        self._first = 0.0
        self._last = 0.0
        self._scheduled = False
        self.runs = 0

    def connection_ended(self) -> None:
        now = time.monotonic()
        if self.ended == 0:
            self._first = now
        self.ended += 1
        self._last = now
        if not self._scheduled and self.ended >= MIN_ENDED:
            self._scheduled = True
            self._call_later(QUIET_SECS, self._check)

    def _check(self) -> None:
        now = time.monotonic()
        quiet_for = now - self._last
        if quiet_for < QUIET_SECS and now - self._first < MAX_WAIT_SECS:
            self._call_later(QUIET_SECS - quiet_for, self._check)
            return
        self._scheduled = False
        self.reclaim()

    def reclaim(self) -> None:
        started = time.perf_counter()
        ended, self.ended = self.ended, 0
        collected = gc.collect()
        collected_at = time.perf_counter()
        if self._trim is not None:
            self._trim(0)
        self.runs += 1
        log.debug(
            "reclaim after %d connections ended: gc collected %d objects in %.1f ms, "
            "malloc_trim %s in %.1f ms",
            ended,
            collected,
            (collected_at - started) * 1000,
            "ran" if self._trim is not None else "unavailable",
            (time.perf_counter() - collected_at) * 1000,
        )
