"""benchmarks/table5_overhead.py: the optimizers it times and the memory it counts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import optimizers
from benchmarks import table5_overhead as t5
from benchmarks._overhead_measure import STEPS_PER_EPOCH, mlp


def _after_one_step(cfg: dict) -> tuple[object, torch.nn.Module]:
    model = mlp((16, 32, 4))
    opt = optimizers.build(cfg, model, steps_per_epoch=STEPS_PER_EPOCH)
    F.cross_entropy(model(torch.randn(8, 16)), torch.randint(0, 4, (8,))).backward()
    opt.step()
    return opt, model


@pytest.fixture(scope="module")
def cfgs() -> dict[str, dict]:
    return t5.optimizer_configs()


def test_every_suite_optimizer_adamw_first_and_the_papers_metaoptimize(cfgs: dict[str, dict]) -> None:
    assert next(iter(cfgs)) == "adamw" and cfgs["metaoptimize/adamw+lion"]["meta"] == "lion"
    assert {"mechanic_adam", "dog", "prodigy", "dadapt_adam", "tlr"} <= set(cfgs)
    assert not any("(fused)" in label for label in cfgs)


def test_memory_counts_params_grads_and_all_optimizer_state(cfgs: dict[str, dict]) -> None:
    params = sum(p.numel() * 4 for p in mlp((16, 32, 4)).parameters())
    opt, model = _after_one_step(cfgs["adamw"])
    # p, g, exp_avg, exp_avg_sq, and each of the 4 tensors' step counter (a float32 scalar)
    assert t5.state_bytes(opt, model) == 4 * params + 4 * 4
    opt, model = _after_one_step(cfgs["lion"])
    assert 3 * params <= t5.state_bytes(opt, model) <= 3 * params + 64  # p, g, m (+ scalars)
    opt, model = _after_one_step(cfgs["mechanic_adam"])  # its base AdamW's state and its own reference
    assert t5.state_bytes(opt, model) > 5 * params


def test_the_llama_model_is_llama2c_15m() -> None:
    with torch.device("meta"):  # shapes only: no 15M-parameter initialisation
        model = t5.llama15m()
    assert model.config.hidden_size == 288 and model.config.num_hidden_layers == 6
    assert 15.0e6 < sum(p.numel() for p in model.parameters()) < 15.5e6
