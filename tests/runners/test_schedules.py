"""LR multipliers (runners/schedules.py): lengths in epochs or fractions, applied per step."""

import math

import pytest

from runners.schedules import multiplier


def test_multistep_uses_the_epoch_index():
    f = multiplier(
        {"name": "multistep", "milestones_epochs": [60, 80, 95], "gamma": 0.1},
        steps_per_epoch=10,
        total_steps=1000,
    )
    assert [f(t) for t in (0, 599, 600, 799, 800, 949, 950, 999)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )


def test_warmup_cosine_and_linear():
    cfg = {"name": "warmup_cosine", "warmup_epochs": 1, "final_factor": 0.1}
    f = multiplier(cfg, steps_per_epoch=10, total_steps=110)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.1)
    g = multiplier({"name": "linear", "warmup_fraction": 0.5}, steps_per_epoch=10, total_steps=100)
    assert g(49) == pytest.approx(1.0) and g(75) == pytest.approx(0.5) and g(100) == 0.0
    assert multiplier({"name": "constant"}, steps_per_epoch=1, total_steps=1)(12345) == 1.0


def test_bad_schedule_values():
    with pytest.raises(ValueError, match="warmup_fraction"):
        multiplier({"name": "linear", "warmup_fraction": 1.5}, steps_per_epoch=1, total_steps=10)
    with pytest.raises(ValueError, match="name must be one of"):
        multiplier({"name": "cyclic"}, steps_per_epoch=1, total_steps=10)
