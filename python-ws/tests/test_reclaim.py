"""reclaim.Reclaimer's timing, on a fake clock: when a wave of disconnects counts as over."""

from __future__ import annotations

import pytest

from python_ws import reclaim


class Clock:
    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[tuple[float, object]] = []

    def monotonic(self) -> float:
        return self.now

    def call_later(self, delay: float, f) -> None:
        self.timers.append((self.now + delay, f))

    def advance(self, secs: float) -> None:
        """Move time on and run every timer now due (timers may add timers)."""
        self.now += secs
        while due := [t for t in self.timers if t[0] <= self.now]:
            for t in due:
                self.timers.remove(t)
                t[1]()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(reclaim.time, "monotonic", c.monotonic)
    return c


def runs_with(monkeypatch: pytest.MonkeyPatch, r: reclaim.Reclaimer) -> list[str]:
    calls: list[str] = []
    monkeypatch.setattr(reclaim.gc, "collect", lambda: calls.append("gc") or 0)
    monkeypatch.setattr(r, "_trim", lambda pad: calls.append("trim") or 1)
    return calls


def test_a_few_endings_reclaim_nothing(clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    r = reclaim.Reclaimer(clock.call_later)
    calls = runs_with(monkeypatch, r)
    for _ in range(reclaim.MIN_ENDED - 1):
        r.connection_ended()
    clock.advance(3600)
    assert calls == [] and clock.timers == []


def test_a_wave_is_reclaimed_once_when_it_is_over(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = reclaim.Reclaimer(clock.call_later)
    calls = runs_with(monkeypatch, r)
    for _ in range(1000):
        r.connection_ended()
        clock.advance(0.001)
    # Still ending within the quiet period: nothing yet.
    clock.advance(reclaim.QUIET_SECS / 2)
    assert calls == []
    clock.advance(reclaim.QUIET_SECS)
    assert calls == ["gc", "trim"] and r.runs == 1 and r.ended == 0
    clock.advance(3600)
    assert r.runs == 1


def test_churn_that_never_pauses_is_reclaimed_after_the_longest_wait(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = reclaim.Reclaimer(clock.call_later)
    calls = runs_with(monkeypatch, r)
    step = reclaim.QUIET_SECS / 4
    for _ in range(int(reclaim.MAX_WAIT_SECS / step) + 8):
        for _ in range(reclaim.MIN_ENDED):
            r.connection_ended()
        clock.advance(step)
    assert calls[:2] == ["gc", "trim"]


def test_glibc_has_malloc_trim() -> None:
    # The lab's machines and python-ws's image (Debian, glibc) both have it.
    assert reclaim._malloc_trim() is not None
