"""Smoke test of benchmarks/vision_throughput.py: one round of one step a side, no timing claims."""

from __future__ import annotations

import re

import pytest

from benchmarks import vision_throughput


def test_prints_both_rates_and_their_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    assert vision_throughput.main(["--batch", "2", "--steps", "1", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    rates = {name: float(v) for name, v in re.findall(r"^\s*(runner|hand):\s+([\d.]+) images/s", out, re.M)}
    assert set(rates) == {"runner", "hand"} and all(v > 0 for v in rates.values())
    ratio = float(re.search(r"runner / hand = ([\d.]+)", out).group(1))
    assert ratio == pytest.approx(rates["runner"] / rates["hand"], rel=5e-3)
