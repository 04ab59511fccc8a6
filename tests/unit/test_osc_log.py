"""How often OSC drops are logged: a few lines per kind per interval, then a summary line."""

from __future__ import annotations

import logging

import pytest

from livediffusion_bridge.osc import LogLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _summaries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "not logged" in r.getMessage()]


def test_a_few_lines_per_kind_per_interval_then_one_summary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    limiter = LogLimiter(lines=5, interval=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="livediffusion_bridge.osc"):
        allowed = [limiter.allow("rejected") for _ in range(1000)]
        assert allowed.count(True) == 5 and allowed[:5] == [True] * 5
        assert limiter.allow("malformed")  # each kind has its own budget
        clock.now += 9.9
        limiter.flush()
        assert _summaries(caplog) == []  # the interval has not ended
        clock.now += 0.2
        limiter.flush()
        assert _summaries(caplog) == [
            "OSC: 995 more rejected messages not logged in 10.0 s (at most 5 lines per 10 s)"
        ]
        limiter.flush()
        assert len(_summaries(caplog)) == 1  # said once
        clock.now += 300.0  # minutes later, in a quiet show, one bad message is said
        assert limiter.allow("rejected")


def test_a_new_interval_sums_up_the_last_one_when_drops_keep_coming(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    limiter = LogLimiter(lines=2, interval=1.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="livediffusion_bridge.osc"):
        for _ in range(32):  # a steady flood, 8 a second for 4 s, no quiet moment
            limiter.allow("flooded")
            clock.now += 0.125
    text = "OSC: 6 more datagrams over the rate limit not logged in 1.0 s (at most 2 lines per 1 s)"
    assert _summaries(caplog) == [text] * 3  # the fourth interval is summed up by flush()


def test_closing_sums_up_what_is_pending(caplog: pytest.LogCaptureFixture) -> None:
    limiter = LogLimiter(lines=1, interval=10.0, clock=Clock())
    with caplog.at_level(logging.WARNING, logger="livediffusion_bridge.osc"):
        for _ in range(4):
            limiter.allow("malformed")
        limiter.flush(everything=True)
    assert _summaries(caplog) == [
        "OSC: 3 more malformed datagrams not logged in 0.0 s (at most 1 lines per 10 s)"
    ]
