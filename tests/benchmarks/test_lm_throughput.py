"""benchmarks/lm_throughput.py runs end to end at the smallest size (the layout only; no speed asserted)."""

from __future__ import annotations

from benchmarks import lm_throughput


def test_prints_both_rates_and_their_ratio(capsys):
    out = lm_throughput.main(["--batch", "1", "--steps", "1", "--rounds", "1"])
    assert set(out) == {"runner", "hand loop", "ratio"} and out["ratio"] > 0
    text = capsys.readouterr().out
    assert "15,191,712 parameters" in text and "ratio runner / hand loop" in text
