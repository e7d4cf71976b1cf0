"""Smoke test of benchmarks/optimizer_overhead.py: both tables on a tiny MLP, 2 rounds, no timing claims."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from benchmarks import optimizer_overhead as bench
from benchmarks._overhead_floors import FLOORS
from benchmarks._overhead_measure import iteration_times, numel, step_times
from benchmarks._timing import CopyProbe, copy_bandwidth, medians, round_robin

SIZES = (8, 16, 4)


@pytest.fixture(scope="module")
def discovered() -> tuple[list[bench.Row], list[str]]:
    return bench.discover()


@pytest.fixture(autouse=True)
def _few_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _positive_finite(df: pd.DataFrame, column: str, mask: pd.Series) -> None:
    values = df.loc[mask, column]
    assert len(values) and all(math.isfinite(v) and v > 0 for v in values), (column, values.tolist())


def test_round_robin_interleaves_and_counts():
    order: list[str] = []
    calls = {n: (lambda n=n: order.append(n)) for n in "abc"}
    samples = round_robin(calls, rounds=3, inner=2, warmup=1)
    assert {k: len(v) for k, v in samples.items()} == {"a": 3, "b": 3, "c": 3}
    assert order[:3] == ["a", "b", "c"]  # warm-up
    rounds = ["".join(order[3 + 6 * r : 3 + 6 * (r + 1)][::2]) for r in range(3)]
    assert rounds == ["abc", "bca", "cab"]
    assert all(v >= 0 for v in medians(samples).values())


def test_copy_bandwidth_is_positive_and_counts_read_plus_write():
    probe = CopyProbe.of_numel(1000)
    assert probe.bytes_moved == 8000
    probe()
    assert torch.equal(probe.src, probe.dst)
    assert 0 < copy_bandwidth(1 << 16, repeats=2) < math.inf


def test_discovery_covers_every_config_and_names_the_missing(discovered):
    rows, missing = discovered
    labels = [r.label for r in rows]
    assert {"sgd", "adamw", "adamw (fused)"} <= set(labels)
    assert len(labels) == len(set(labels))
    registered = {r.cfg["name"] for r in rows if r.ours}
    for name in bench.EXPECTED:
        assert (name in registered) != any(m.startswith(f"{name}:") for m in missing), name
    assert all(r.floor is not None and r.floor.tensors > 0 for r in rows if r.cfg["name"] in FLOORS)
    for row in rows:  # every optimizer of ours that takes fused=True is timed again with it
        if row.ours and not row.label.endswith("(fused)") and bench.takes_fused(row.cfg["name"]):
            twin = next(r for r in rows if r.label == f"{row.label} (fused)")
            assert twin.cfg["fused"] is True and twin.ref_row == row.label and twin.floor == row.floor


def test_fused_config_fuses_mechanics_base_when_it_can():
    cfg = {"name": "mechanic", "base": {"name": "adamw", "lr": 1.0, "fused": None}}
    assert bench.fused_cfg(cfg) == {"name": "mechanic", "fused": True, "base": {**cfg["base"], "fused": True}}
    assert cfg["base"]["fused"] is None  # not mutated
    assert bench.fused_cfg({"name": "lion", "lr": 1e-4}) == {"name": "lion", "lr": 1e-4, "fused": True}


def test_floor_counts_follow_the_update_rules():
    assert FLOORS["adamw"]({}).tensors == 7
    assert FLOORS["sgd"]({"momentum": 0.9}).tensors == 5
    mech = FLOORS["mechanic"]
    assert mech({"base": {"name": "adamw"}}).tensors == 11
    assert mech({"base": {"name": "sgd", "momentum": 0.9}}).tensors == 9
    assert FLOORS["prodigy"]({}).tensors == 13
    assert FLOORS["dadapt_adam"]({}).tensors == 9
    assert FLOORS["metaoptimize"]({"base": "adamw"}).tensors == 9
    assert FLOORS["tlr"]({"update_every": 4}).tensors == 5 + 1


def test_tables_have_every_row_and_positive_finite_times(discovered):
    rows, _ = discovered
    n = numel(SIZES)
    times, bandwidth = step_times(rows, sizes=SIZES, rounds=2, inner=1, copy_numel=1 << 16)
    assert math.isfinite(bandwidth) and bandwidth > 0
    step = bench.step_table(rows, times, bandwidth, n)
    assert list(step["optimizer"]) == [r.label for r in rows]
    assert list(step.columns) == [
        "optimizer", "ours ms", "reference", "ref ms", "floor tensors", "floor ms", "ours/floor",
        "ref/floor", "ours/ref", "ours/AdamW", "ref/base", "issue ref/base", "target", "result",
    ]  # fmt: skip
    ours = pd.Series([r.ours for r in rows])
    has_ref = pd.Series([r.ref is not None for r in rows])
    has_floor = pd.Series([r.floor is not None for r in rows])
    _positive_finite(step, "ref ms", has_ref)
    _positive_finite(step, "floor ms", has_floor)
    if ours.any():
        _positive_finite(step, "ours ms", ours)
        _positive_finite(step, "ours/AdamW", ours)
        _positive_finite(step, "ours/floor", ours & has_floor)
        assert set(step.loc[ours & has_floor, "result"]) <= {"pass", "MISS"}
    assert step.loc[~ours, "ours ms"].isna().all()

    iters = iteration_times(rows, sizes=SIZES, batch=8, rounds=2, inner=1)
    table = bench.iteration_table(rows, iters)
    assert list(table["optimizer"]) == [r.label for r in rows]
    assert list(table.columns) == [
        "optimizer", "ours ms", "ours vs AdamW %", "reference", "ref ms", "ref vs AdamW %",
        "issue ref %", "target", "result",
    ]  # fmt: skip
    _positive_finite(table, "ref ms", has_ref)
    if ours.any():
        _positive_finite(table, "ours ms", ours)
        assert table.loc[ours, "ours vs AdamW %"].map(math.isfinite).all()
    adamw = table.loc[table["optimizer"] == "adamw", "ref vs AdamW %"].item()
    assert adamw == 0.0
