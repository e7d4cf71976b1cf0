"""One battery, every optimizer config: adding ``configs/optimizer/<name>.yaml`` adds its test cases.

Properties (issue: verified optimizer library): builds through the registry; brings a convex loss down
from a tiny and from a far too large initial step size; state round-trips through ``torch.save`` into a
fresh process bit-identically; handles parameters whose grad is None; skips a step with a non-finite
gradient without touching any state; exposes finite diagnostics.
"""

from __future__ import annotations

import copy
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import optimizers
from optimizers.registry import torch_rule
from tests.optimizers.battery_problem import CONFIG_DIR, build, full_loss, load_config, run_steps

CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
IDS = [p.stem for p in CONFIGS]
REPO = Path(__file__).resolve().parents[2]


def is_ours(opt: torch.optim.Optimizer) -> bool:
    return not torch_rule(type(opt))


def ours_only(path: Path) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    model, opt = build(path)
    if not is_ours(opt):
        pytest.skip(f"{path.stem} is torch's own optimizer, a baseline outside this library's contract")
    return model, opt


pytestmark = pytest.mark.usefixtures("float64_single_thread")  # tests/optimizers/conftest.py


def test_every_registered_optimizer_has_a_config():
    names = {load_config(p)["name"] for p in CONFIGS}
    assert set(optimizers.OPTIMIZERS) <= names, set(optimizers.OPTIMIZERS) - names


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_builds_and_exposes_finite_diagnostics(path):
    model, opt = ours_only(path)
    run_steps(model, opt, 0, 5)
    diag = opt.diagnostics()
    assert diag and all(isinstance(v, float) and math.isfinite(v) for v in diag.values()), diag
    assert diag["skipped_steps"] == 0.0
    assert isinstance(type(opt).initial_lr_arg, str)


def _initial_lr_values(path: Path, arg: str) -> dict[str, float]:
    """1e-6, and a value 100x too large: 100x the default, or 1.0 where the default is a tiny seed value.

    A default below 1e-5 is the seed of an adaptive estimate (D-Adapt's d0, DoG's reps_rel, MetaOptimize's
    alpha0), not a learning rate: there 1.0 is the "far too large" start.
    """
    node = load_config(path)
    for key in arg.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    default = node if isinstance(node, float | int) else None
    large = 100.0 * default if default is not None and default > 1e-5 else 1.0
    return {"tiny": 1e-6, "large": large}


# Findings, not bugs: the authors' packages give the same trajectories (tests/optimizers/test_<name>.py).
# D-Adaptation's d is a monotone lower bound on D, so a d0 above the D it would learn (about 0.2 and 0.07
# here) is never corrected: the method runs as Adam at step 1.0 and the loss oscillates upwards.
# MetaOptimize from alpha0=1.0 (AdamW base): the first steps throw the weights far out, then the
# meta-gradient drives alpha to ~4e-11 and the loss stays above its start (1.56 -> 1.82 after 4000 steps);
# from alpha0=0.1 it recovers (1.56 -> 0.29).
# strict=True: if one of these starts passing, the mark must go.
KNOWN_FAILURES = {
    ("dadapt_adam", "large"): "d is a monotone lower bound: a d0 of 1.0 above the learned d is never undone",
    ("prodigy", "large"): "d is a monotone lower bound: a d0 of 1.0 above the learned d is never undone",
    ("metaoptimize", "large"): "alpha0=1.0 overshoots, then alpha collapses to ~4e-11 first",
}


def _cases() -> list:
    return [
        pytest.param(path, scale, id=f"{path.stem}-{scale}", marks=_known_failure(path.stem, scale))
        for path in CONFIGS
        for scale in ("tiny", "large")
    ]


def _known_failure(name: str, scale: str) -> list:
    reason = KNOWN_FAILURES.get((name, scale))
    return [pytest.mark.xfail(reason=reason, strict=True)] if reason else []


@pytest.mark.parametrize(("path", "scale"), _cases())
def test_brings_convex_loss_down_from_bad_initial_lr(path, scale):
    _, probe = ours_only(path)
    arg = type(probe).initial_lr_arg
    value = _initial_lr_values(path, arg)[scale]
    model, opt = build(path, **{arg: value})
    before = full_loss(model)
    run_steps(model, opt, 0, 400)
    after = full_loss(model)
    assert math.isfinite(after) and after < before, f"{arg}={value}: loss {before:.4f} -> {after:.4f}"


@pytest.fixture(scope="module")
def resumed_params(tmp_path_factory) -> dict[str, dict[str, torch.Tensor]]:
    """Checkpoint every config after 30 steps, continue 30 more in ONE fresh process per config."""
    out = {}
    tmp = tmp_path_factory.mktemp("resume")
    procs = []
    for path in CONFIGS:
        model, opt = build(path)
        run_steps(model, opt, 0, 30)
        ckpt, result = tmp / f"{path.stem}.pt", tmp / f"{path.stem}.out.pt"
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, ckpt)
        worker = "tests.optimizers._battery_worker"
        cmd = [sys.executable, "-m", worker, str(path), str(ckpt), "30", "30", str(result)]
        procs.append((path.stem, result, subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True)))
    for name, result, proc in procs:
        _, err = proc.communicate(timeout=600)
        out[name] = torch.load(result) if proc.returncode == 0 else err
    return out


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_state_dict_round_trip_in_fresh_process_is_bit_identical(path, resumed_params):
    model, opt = build(path)
    run_steps(model, opt, 0, 60)
    resumed = resumed_params[path.stem]
    assert isinstance(resumed, dict), f"resumed process failed:\n{resumed}"
    for key, value in model.state_dict().items():
        assert torch.equal(value, resumed[key]), f"{key} differs after resume"


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_param_groups_with_grad_none(path):
    """A whole param group without gradients (a frozen layer) neither crashes the step nor goes non-finite."""
    torch.manual_seed(0)
    model, opt = build(path)
    assert any(p is model.unused.weight for g in opt.param_groups for p in g["params"])
    before = model.linear.weight.detach().clone()
    run_steps(model, opt, 0, 20)
    assert model.unused.weight.grad is None
    assert not torch.equal(before, model.linear.weight)
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("bad", [math.nan, math.inf])
@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_non_finite_gradient_skips_the_step(path, bad):
    model, opt = ours_only(path)
    run_steps(model, opt, 0, 10)
    params = [p.detach().clone() for p in model.parameters()]
    state = copy.deepcopy(opt.state_dict())
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(torch.zeros(2, 12)), torch.tensor([0, 1])).backward()
    model.linear.weight.grad[0, 0] = bad
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters(), strict=True))
    after = opt.state_dict()
    assert _flatten(state, ignore_skips=True) == _flatten(after, ignore_skips=True)
    assert opt.diagnostics()["skipped_steps"] == 1.0
    # and training goes on normally afterwards
    run_steps(model, opt, 10, 5)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _flatten(obj, prefix="", ignore_skips=False) -> dict[str, object]:
    """State as comparable leaves (tensors as bytes), optionally without the skip counter."""
    out: dict[str, object] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            if ignore_skips and "skip" in str(k):
                continue
            out.update(_flatten(v, f"{prefix}/{k}", ignore_skips))
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            out.update(_flatten(v, f"{prefix}/{i}", ignore_skips))
    elif isinstance(obj, torch.Tensor):
        out[prefix] = (obj.dtype, tuple(obj.shape), obj.detach().cpu().numpy().tobytes())
    else:
        out[prefix] = obj
    return out
