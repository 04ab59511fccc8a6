"""Ramps and glides: numeric values and prompt/seed fades follow time, never jump."""

from __future__ import annotations

import pytest

from livediffusion.run.glide import Glide, Ramp


def test_ramp_goes_from_value_to_target_over_the_time() -> None:
    ramp = Ramp(0.0)
    assert ramp.follow(1.0, now=10.0, seconds=2.0) == 0.0
    halfway = ramp.follow(1.0, now=11.0, seconds=2.0)
    assert halfway == pytest.approx(0.5)  # smoothstep is symmetric
    quarter = ramp.value(10.5)
    assert 0.0 < quarter < 0.25  # eased: slow at the start
    assert ramp.follow(1.0, now=12.0, seconds=2.0) == 1.0
    assert ramp.value(50.0) == 1.0


def test_ramp_without_time_follows_at_once() -> None:
    ramp = Ramp(0.3)
    assert ramp.follow(0.9, now=0.0, seconds=0.0) == 0.9


def test_a_new_target_mid_ramp_starts_from_what_is_showing() -> None:
    ramp = Ramp(0.0)
    ramp.follow(1.0, now=0.0, seconds=1.0)
    showing = ramp.value(0.5)
    assert ramp.follow(0.0, now=0.5, seconds=1.0) == pytest.approx(showing)
    assert ramp.value(1.0) == pytest.approx(showing / 2)
    assert ramp.value(1.5) == 0.0


def test_glide_position_runs_zero_to_one() -> None:
    glide = Glide(1.0)
    assert glide.position(0.0) == 1.0  # settled
    glide.restart(0.0)
    assert glide.position(0.0) == 0.0
    assert glide.position(0.5) == pytest.approx(0.5)
    assert glide.position(1.0) == 1.0
    with pytest.raises(ValueError):
        Glide(-1.0)
