"""Smoke test of benchmarks/vision_throughput.py: one round of one step a side, no timing claims."""

from __future__ import annotations

import re

import pytest

from benchmarks import vision_throughput


def test_prints_both_rates_and_their_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    assert vision_throughput.main(["--batch", "2", "--steps", "1", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    rates = {
        (clock, name): float(v)
        for clock, name, v in re.findall(r"^\s*(wall|cpu)\s+(runner|hand):\s+([\d.e+-]+) images/s", out, re.M)
    }
    assert len(rates) == 4 and all(v > 0 for v in rates.values())
    wall, cpu = (float(v) for v in re.search(r"runner / hand = ([\d.]+) wall, ([\d.]+) cpu", out).groups())
    assert wall == pytest.approx(rates["wall", "runner"] / rates["wall", "hand"], rel=5e-3)
    assert cpu == pytest.approx(rates["cpu", "runner"] / rates["cpu", "hand"], rel=5e-3)
