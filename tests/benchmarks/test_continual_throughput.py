"""benchmarks/continual_throughput.py runs end to end on a tiny synthetic stream and prints its table."""

from __future__ import annotations

from benchmarks import continual_throughput


def test_prints_both_optimizers_and_their_ratio(capsys):
    assert (
        continual_throughput.main(
            ["--steps", "3", "--rounds", "1", "--train-images", "500", "--members", "2"]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "adamw" in out and "metaoptimize" in out
    assert "2 seeds as one batched program" in out
    assert "MetaOptimize / adamw (wall): step" in out and "MetaOptimize / adamw_fused (cpu): step" in out
