"""MetaOptimize against the authors' own trajectories (reference/metaoptimize/), plus its contract.

Every run listed in the reference ``index.json`` is replayed in float64 from the stored data and
initial weights, and compared per step (loss, α used, β after, trace norm, z) and at the end (weights)
with ``numpy.allclose`` at the tolerance the run file recommends (docs/optimizers/metaoptimize.md §9):
up to rounding, since ``HF.py`` orders its float operations differently. ``HF.py`` runs use the default
``normalization="code"``; the two runs of the 2025 pip package use ``normalization="package"``.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

import optimizers
from optimizers import _fused
from optimizers._metaoptimize_blocks import partition
from optimizers.metaoptimize import MetaOptimize
from tests.optimizers.batched import (
    Member,
    assert_batched_matches_alone,
    assert_batched_resume_bitwise,
    worst_gap,
)
from tests.optimizers.equivalence import assert_fused_matches_eager

REF = Path(__file__).resolve().parents[2] / "reference" / "metaoptimize"
INDEX = json.loads((REF / "index.json").read_text())["runs"]
ALG = {"adamw": "adamw", "adam": "adam", "lion": "lion", "sgdm": "sgdm", "rmsprop": "rmsprop"}


pytestmark = pytest.mark.usefixtures("float64_single_thread")  # tests/optimizers/conftest.py


# ----------------------------------------------------------------- reference problems
class RefModel(torch.nn.Module):
    """The three reference models (problems.json ``description``), with the stored initial weights."""

    def __init__(self, problem: str, spec: dict[str, Any]) -> None:
        super().__init__()
        self.problem = problem
        shapes = {
            "mlp_reg": [(8, 16), (16, 1)],
            "mlp_cls": [(10, 32), (32, 32), (32, 3)],
            "logreg": [(20, 1)],
        }
        names = ["fc1", "fc2", "fc3"] if problem != "logreg" else ["lin"]
        for name, (i, o) in zip(names, shapes[problem], strict=False):
            self.add_module(name, torch.nn.Linear(i, o, dtype=torch.float64))
        assert [n for n, _ in self.named_parameters()] == spec["param_order"]
        with torch.no_grad():
            for n, p in self.named_parameters():
                p.copy_(torch.tensor(spec["init_params"][n]["values"], dtype=torch.float64).reshape(p.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.problem == "mlp_reg":
            return self.fc2(torch.tanh(self.fc1(x))).squeeze(-1)
        if self.problem == "mlp_cls":
            return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))
        return self.lin(x).squeeze(-1)


def loss_fn(problem: str, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if problem == "mlp_reg":
        return F.mse_loss(out, y)
    if problem == "mlp_cls":
        return F.cross_entropy(out, y)
    return F.binary_cross_entropy_with_logits(out, y)


def optimizer_kwargs(run: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments from a run file: ``config`` (HF.py runs) or ``constructor`` (package runs)."""
    if "constructor" in run:
        c = run["constructor"]
        return dict(
            base="adamw",
            meta="lion",
            normalization="package",
            alpha0=c["alpha0"],
            meta_lr=c["meta_stepsize"],
            gamma=c["gamma"],
            momentum=c["b1"],
            normalizer=c["b2"],
            weight_decay=c["weight_decay"],
            meta_momentum=c["meta_b1"],
            meta_lion_c=c["meta_c1"],
            eps=run["eps"],
        )
    c, b, m = run["config"], run["config"]["base"], run["config"]["meta"]
    kw = dict(
        base=ALG[b["alg"].lower()],
        meta="adam" if m["alg"] == "AdamW" else ALG[m["alg"].lower()],  # continual HF.py names Adam 'AdamW'
        alpha0=c["alpha0"],
        meta_lr=c["meta_stepsize"],
        gamma=c["gamma"],
        weight_decay=b["weight_decay"],
        meta_weight_decay=m["weight_decay"],
        eps=c["epsilon"],
    )
    for ours, theirs in [
        ("momentum", "momentum_param"),
        ("normalizer", "normalizer_param"),
        ("lion_c", "Lion_beta2"),
    ]:
        if theirs in b:
            kw[ours] = b[theirs]
        if theirs in m:
            kw[f"meta_{ours}"] = m[theirs]
    return kw


def replay(entry: dict[str, Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Run our optimizer on the entry's problem for as many steps as the reference; record everything."""
    run = json.loads((REF / entry["file"]).read_text())
    spec = json.loads((REF / "problems.json").read_text())["problems"][run["problem"]]
    model = RefModel(run["problem"], spec)
    x = torch.tensor(spec["X"], dtype=torch.float64)
    y = torch.tensor(spec["y"], dtype=torch.long if run["problem"] == "mlp_cls" else torch.float64)
    opt = MetaOptimize.from_model(model, blocks=opt_blocks(run), **optimizer_kwargs(run))
    beta0 = opt.state["metaoptimize"]["beta"].tolist()
    # float64 log(alpha0), the stored value to the ulp: a libm may round log(alpha0) either way when it lies
    # near a midpoint (log(1e-4) is 0.016 ulp from one), so this does not ask for bitwise equality.
    assert all(abs(a - b) <= math.ulp(b) for a, b in zip(beta0, run["beta0"], strict=True)), beta0
    rec: dict[str, list] = {k: [] for k in ("loss", "alpha", "z", "beta_after", "h_norm")}
    rec["beta0"] = beta0
    for t in range(run["steps"]):
        idx = spec["batches"][t] if spec["batches"] is not None else slice(None)
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(run["problem"], model(x[idx]), y[idx])
        loss.backward()
        rec["loss"].append(loss.item())
        rec["alpha"].append(opt.state["metaoptimize"]["beta"].exp().tolist())
        opt.step()
        rec["z"].append(opt.state["metaoptimize"]["z"].tolist())
        rec["beta_after"].append(opt.state["metaoptimize"]["beta"].tolist())
        h = [opt.state[p]["h"] for p in model.parameters()]
        rec["h_norm"].append(math.sqrt(sum(float((hi * hi).sum()) for hi in h)))
        if t == 0:
            rec["params_after_step1"] = flat(model)
    rec["final_params"] = flat(model)
    return run, {k: np.asarray(v) for k, v in rec.items()}


def opt_blocks(run: dict[str, Any]) -> list[list[str]]:
    return run["blocks"] if "blocks" in run else run["config"]["blocks"]


def flat(model: torch.nn.Module) -> np.ndarray:
    return np.concatenate([p.detach().reshape(-1).numpy() for p in model.parameters()])


def ref_flat(params: dict[str, list[float]], model_order: list[str]) -> np.ndarray:
    return np.concatenate([np.asarray(params[n]) for n in model_order])


def test_reference_index_lists_every_run_file():
    """No reference run can vanish: ``index.json`` lists every ``runs/*.json`` once (9 ``HF.py``, 2 package
    runs), each file exists, and the parametrised test below runs one case per entry."""
    files = sorted(p.relative_to(REF).as_posix() for p in (REF / "runs").glob("*.json"))
    assert sorted(e["file"] for e in INDEX) == files
    assert len({e["id"] for e in INDEX}) == len(INDEX) == 11
    assert sum(e["id"].startswith("PKG_") for e in INDEX) == 2


@pytest.mark.parametrize("entry", INDEX, ids=[e["id"] for e in INDEX])
def test_reproduces_reference_trajectory(entry):
    """Up to rounding against ``HF.py`` (the run's recommended tolerance); z_1 = 0 and β_2 = β_1 exactly."""
    run, ours = replay(entry)
    tol = run["recommended_tolerance"]
    order = list(run["param_shapes"])
    checks = {k: np.asarray(run[k]) for k in ("loss", "alpha", "beta_after", "h_norm")}
    checks["final_params"] = ref_flat(run["final_params"], order)
    if "params_after_step1" in run:
        checks["params_after_step1"] = ref_flat(run["params_after_step1"], order)
    for key, ref in checks.items():
        assert ours[key].shape == ref.shape, key
        gap = np.max(np.abs(ours[key] - ref))
        assert np.allclose(ours[key], ref, **tol), f"{entry['id']}: {key} max abs gap {gap:.3g}"
    # z crosses zero and is exactly 0 at t = 1: absolute tolerance scaled to the run
    # (docs/optimizers/metaoptimize.md §9). The package's trace has the opposite sign of ours (§5 there),
    # hence its z too.
    z_ref = np.asarray(run["z"]) * (-1.0 if "constructor" in run else 1.0)
    scale = np.max(np.abs(z_ref))
    assert np.allclose(ours["z"], z_ref, rtol=tol["rtol"], atol=tol["rtol"] * scale), entry["id"]
    # Exact, on any CPU: h_1 = 0 makes z_1 = 0 bitwise, and a zero z leaves β bitwise unchanged at t = 1
    # (sign(0) = 0, 0 / sqrt(eps) = 0, (1 - η·0) β = β).
    assert np.all(ours["z"][0] == 0.0)
    assert np.all(ours["beta_after"][0] == ours["beta0"])


# ----------------------------------------------------------------- semantics beyond the references
def tiny_problem(seed: int = 0) -> tuple[torch.nn.Module, list[tuple[torch.Tensor, torch.Tensor]]]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    batches = [(torch.randn(16, 5), torch.randint(0, 3, (16,))) for _ in range(30)]
    return model, batches


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, batches) -> None:
    for x, y in batches:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()


@pytest.mark.parametrize("meta", ["adam", "rmsprop"])
def test_paper_normalization_is_an_option_that_differs_from_the_code(meta):
    betas = {}
    for norm in ("code", "paper"):
        model, batches = tiny_problem()
        opt = MetaOptimize(
            model.parameters(), base="adamw", meta=meta, alpha0=1e-2, meta_lr=1e-2, normalization=norm
        )
        train(model, opt, batches)
        betas[norm] = opt.state["metaoptimize"]["beta"].item()
        assert opt.defaults["normalization"] == norm
    assert (
        MetaOptimize(tiny_problem()[0].parameters(), base="adamw", meta="adam", alpha0=1).defaults[
            "normalization"
        ]
        == "code"
    )
    assert abs(betas["code"] - betas["paper"]) > 1e-3, betas


def test_paper_normalization_is_textbook_adam_at_fixed_step_size():
    """meta='fixed' + normalization='paper' with κ = 0 is torch's Adam with ε outside the root, up to
    rounding (our ``_foreach`` ops against torch's per-tensor Adam: an absolute floor of ~45 ulps of O(1))."""
    model, batches = tiny_problem()
    ref, _ = tiny_problem()
    opt = MetaOptimize(
        model.parameters(), base="adamw", meta="fixed", alpha0=1e-2, weight_decay=0.0, normalization="paper"
    )
    torch_adam = torch.optim.Adam(ref.parameters(), lr=1e-2, eps=1e-8)
    train(model, opt, batches)
    train(ref, torch_adam, batches)
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_code_meta_adam_second_step_and_lion_step_sizes():
    """docs/optimizers/metaoptimize.md §3.3: β_2 = β_1; the code's Adam meta step at t = 2 is η √(1 + λ̄);
    Lion moves by ±η."""
    for meta, expected in [("adam", math.sqrt(1 + 0.999)), ("lion", 1.0)]:
        model, batches = tiny_problem()
        opt = MetaOptimize(model.parameters(), base="adamw", meta=meta, alpha0=1e-2, meta_lr=1e-3)
        beta0 = opt.state["metaoptimize"]["beta"].item()
        train(model, opt, batches[:1])
        assert opt.state["metaoptimize"]["beta"].item() == beta0
        train(model, opt, batches[1:2])
        step = abs(opt.state["metaoptimize"]["beta"].item() - beta0) / 1e-3
        assert step == pytest.approx(expected, rel=1e-6)


def test_sgdm_gradient_enters_the_weights_one_step_late():
    """Bitwise: with κ = 0 and m = 0 the first displacement is exactly 0 on any CPU."""
    model, batches = tiny_problem()
    w0 = [p.detach().clone() for p in model.parameters()]
    opt = MetaOptimize(model.parameters(), base="sgdm", meta="adam", alpha0=0.1, weight_decay=0.0)
    train(model, opt, batches[:1])
    assert all(torch.equal(a, b) for a, b in zip(w0, model.parameters(), strict=True))
    train(model, opt, batches[1:2])
    assert not all(torch.equal(a, b) for a, b in zip(w0, model.parameters(), strict=True))


def test_blocks_are_param_groups_with_their_own_alpha_and_diagnostics():
    model, batches = tiny_problem()
    opt = MetaOptimize.from_model(model, blocks=[2, 2], base="lion", meta="adam", alpha0=1e-3, meta_lr=1e-2)
    train(model, opt, batches)
    diag = opt.diagnostics()
    assert set(diag) == {"alpha/block0", "alpha/block1", "z/block0", "z/block1", "skipped_steps"}
    assert diag["alpha/block0"] != diag["alpha/block1"]
    scalar = MetaOptimize.from_model(model, base="adamw", meta="adam", alpha0=1e-3)
    assert set(scalar.diagnostics()) == {"alpha", "z", "skipped_steps"}
    assert scalar.diagnostics()["alpha"] == pytest.approx(1e-3, rel=1e-15)


def test_grad_none_is_a_zero_gradient_and_keeps_block_sums():
    """A tensor without a gradient is treated as g = 0 (weight decay still applies), not skipped. Bitwise:
    both optimizers run the same eager ops on the same values (a zero gradient either way)."""
    model, batches = tiny_problem()
    model[2].bias.requires_grad_(False)
    ref, _ = tiny_problem()
    opt = MetaOptimize(model.parameters(), base="adamw", meta="adam", alpha0=1e-2, meta_lr=1e-2)
    opt_ref = MetaOptimize(ref.parameters(), base="adamw", meta="adam", alpha0=1e-2, meta_lr=1e-2)
    for x, y in batches:
        for m, o in ((model, opt), (ref, opt_ref)):
            o.zero_grad(set_to_none=True)
            F.cross_entropy(m(x), y).backward()
        ref[2].bias.grad.zero_()
        opt.step()
        opt_ref.step()
    assert model[2].bias.grad is None
    for a, b in zip(model.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(base="adam"), "base"),
        (dict(base="sgd"), "base"),
        (dict(meta="sgd"), "meta"),
        (dict(meta=None), "meta"),
        (dict(alpha0=-1e-3), "alpha0"),
        (dict(alpha0=0.0), "alpha0"),
        (dict(meta_lr=-1.0), "meta_lr"),
        (dict(gamma=1.5), "gamma"),
        (dict(momentum=1.0), "momentum"),
        (dict(normalizer=-0.1), "normalizer"),
        (dict(meta_momentum=1.2), "meta_momentum"),
        (dict(meta_normalizer=1.0), "meta_normalizer"),
        (dict(lion_c=2.0), "lion_c"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(eps=0.0), "eps"),
        (dict(normalization="textbook"), "normalization"),
        (dict(normalization="package", meta="adam"), "normalization"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(kwargs, name):
    args = dict(base="adamw", meta="adam", alpha0=1e-3) | kwargs
    with pytest.raises(ValueError, match=name):
        MetaOptimize(tiny_problem()[0].parameters(), **args)


def test_bad_blocks_and_group_overrides_raise():
    model, _ = tiny_problem()
    for blocks in ("resnet18", "nonsense", [1, 1], [["0.weight"], ["0.bias"]], "[3,3]"):
        with pytest.raises(ValueError, match="blocks"):
            MetaOptimize.from_model(model, blocks=blocks, base="adamw", meta="adam", alpha0=1e-3)
    groups = [{"params": [model[0].weight]}, {"params": [model[0].bias], "gamma": 0.5}]
    with pytest.raises(ValueError, match="gamma"):
        MetaOptimize(groups, base="adamw", meta="adam", alpha0=1e-3)


def test_registered_and_buildable_from_config():
    assert optimizers.OPTIMIZERS["metaoptimize"] is MetaOptimize
    model, batches = tiny_problem()
    cfg = dict(name="metaoptimize", base="adamw", meta="adam", alpha0=1e-3, blocks="per_tensor")
    opt = optimizers.build(cfg, model, steps_per_epoch=10)
    assert [g["name"] for g in opt.param_groups] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert MetaOptimize.initial_lr_arg == "alpha0" and MetaOptimize.lr_schedule_compatible is False


# ------------------------------------------ block presets (docs/optimizers/metaoptimize.md §6)
class SimpleCNN(torch.nn.Module):
    """The parameter layout of the continual CIFAR-100 ``models.SimpleCNN`` (conv1, conv2, fc1, fc2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3)
        self.conv2 = torch.nn.Conv2d(8, 8, 3)
        self.fc1 = torch.nn.Linear(8, 16)
        self.fc2 = torch.nn.Linear(16, 10)


@pytest.mark.parametrize(
    "arch, counts", [("resnet18", [3, 12, 15, 15, 15, 2]), ("resnet50", [3, 30, 39, 57, 30, 2])]
)
def test_resnet_presets_match_hf_counts_on_torchvision(arch, counts):
    torchvision = pytest.importorskip("torchvision")
    model = getattr(torchvision.models, arch)(num_classes=10)
    opt = MetaOptimize.from_model(model, blocks=arch, base="adamw", meta="lion", alpha0=1e-6)
    assert [g["name"] for g in opt.param_groups] == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert [len(g["params"]) for g in opt.param_groups] == counts
    named = [n for n, _ in model.named_parameters()]
    hf = partition(model, counts)  # HF.py's count preset, contiguous in parameter order
    assert list(partition(model, arch).values()) == list(hf.values())
    assert partition(model, f"{arch}_blocks") == partition(model, arch)
    assert partition(model, arch)["stem"] == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert partition(model, arch)["head"] == ["fc.weight", "fc.bias"]
    assert sum(counts) == len(named)
    blocks = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert set(opt.diagnostics()) == {f"{k}/{b}" for k in ("alpha", "z") for b in blocks} | {"skipped_steps"}


def test_continual_cnn_preset_is_first_three_layers_and_last_layer():
    model = SimpleCNN()
    expected = {
        "others": ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias"],
        "last_layer": ["fc2.weight", "fc2.bias"],
    }
    assert partition(model, "continual_cnn") == expected
    assert partition(model, "last_layer_and_others") == expected
    opt = MetaOptimize.from_model(model, blocks="continual_cnn", base="adamw", meta="adam", alpha0=1e-4)
    assert [len(g["params"]) for g in opt.param_groups] == [6, 2]
    with pytest.raises(ValueError, match="blocks"):
        partition(tiny_problem()[0], "continual_cnn")


# ----------------------------------------------------------------- state, dtype, non-finite
def test_blockwise_state_dict_round_trip_is_bit_identical():
    """Bitwise: resuming the same (eager) path from a checkpoint."""
    import io

    def fresh():
        model, batches = tiny_problem()
        kw = dict(base="rmsprop", meta="adam", alpha0=1e-2, meta_lr=1e-2, gamma=0.999)
        return model, MetaOptimize.from_model(model, blocks=[2, 2], **kw), batches

    model, opt, batches = fresh()
    train(model, opt, batches)
    model2, opt2, _ = fresh()
    train(model2, opt2, batches[:15])
    buf = io.BytesIO()
    torch.save({"model": model2.state_dict(), "opt": opt2.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=False)
    model3, opt3, _ = fresh()
    model3.load_state_dict(saved["model"])
    opt3.load_state_dict(saved["opt"])
    train(model3, opt3, batches[15:])
    for a, b in zip(model.parameters(), model3.parameters(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(opt.state["metaoptimize"]["beta"], opt3.state["metaoptimize"]["beta"])


def test_non_finite_gradient_skips_the_whole_blockwise_step():
    """Bitwise: a skipped step leaves every parameter and β untouched."""
    model, batches = tiny_problem()
    opt = MetaOptimize.from_model(model, blocks="per_tensor", base="adamw", meta="adam", alpha0=1e-2)
    train(model, opt, batches[:5])
    before = [p.detach().clone() for p in model.parameters()]
    beta = opt.state["metaoptimize"]["beta"].clone()
    opt.zero_grad()
    F.cross_entropy(model(batches[5][0]), batches[5][1]).backward()
    model[2].bias.grad[1] = math.nan
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert torch.equal(beta, opt.state["metaoptimize"]["beta"])
    assert opt.state["metaoptimize"]["step"] == 5 and opt.diagnostics()["skipped_steps"] == 1.0


@pytest.mark.parametrize("base", ["sgdm", "adamw", "lion", "rmsprop"])
def test_float32_parameters_keep_their_dtype_and_beta_stays_float64(base):
    torch.set_default_dtype(torch.float32)
    model, batches = tiny_problem()
    opt = MetaOptimize.from_model(model, blocks=[2, 2], base=base, meta="lion", alpha0=1e-2, meta_lr=1e-2)
    train(model, opt, batches)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    assert opt.state["metaoptimize"]["beta"].dtype == torch.float64
    assert all(math.isfinite(v) for v in opt.diagnostics().values())


def test_add_param_group_adds_a_block_at_alpha0():
    model, batches = tiny_problem()
    opt = MetaOptimize(
        [{"params": list(model[0].parameters()), "name": "first"}], base="adamw", meta="adam", alpha0=0.1
    )
    train(model, opt, batches[:3])
    opt.add_param_group({"params": list(model[2].parameters()), "name": "last", "weight_decay": 0.0})
    assert opt.diagnostics()["alpha/last"] == pytest.approx(0.1, rel=1e-15)
    train(model, opt, batches[3:])
    assert opt.state["metaoptimize"]["beta"].shape == (2,)
    with pytest.raises(ValueError, match="meta_lr"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "meta_lr": 1.0})
    assert len(opt.param_groups) == 2


# ----------------------------------------------------------------- fused=True (optimizers._fused)
def fused_groups(model: torch.nn.Module, blocks: str) -> list[dict[str, Any]]:
    """Scalar (one block) or two blocks, the second with its own weight decay, over ``equivalence.mlp``."""
    params = list(model.parameters())
    if blocks == "scalar":
        return [{"params": params}]
    return [
        {"params": params[:2], "name": "first"},
        {"params": params[2:], "name": "rest", "weight_decay": 0.0},
    ]


@pytest.mark.parametrize(
    ("base", "meta", "normalization", "blocks"),
    [
        ("adamw", "adam", "code", "scalar"),
        ("adamw", "adam", "code", "blocks"),
        ("sgdm", "adam", "code", "blocks"),
        ("lion", "adam", "code", "blocks"),
        ("rmsprop", "adam", "code", "blocks"),
        ("sgdm", "lion", "code", "scalar"),
        ("lion", "rmsprop", "code", "scalar"),
        ("rmsprop", "lion", "code", "scalar"),
        ("adamw", "rmsprop", "code", "blocks"),
        ("adamw", "adam", "paper", "blocks"),
        ("rmsprop", "rmsprop", "paper", "blocks"),
        ("adamw", "lion", "package", "blocks"),
        ("adamw", "fixed", "code", "blocks"),
        ("sgdm", "fixed", "code", "scalar"),
    ],
)
def test_fused_matches_eager(base, meta, normalization, blocks):
    kw = dict(alpha0=1e-2, meta_lr=1e-2, gamma=0.99, weight_decay=0.1, normalization=normalization)
    assert_fused_matches_eager(
        lambda m, fused: MetaOptimize(fused_groups(m, blocks), base=base, meta=meta, fused=fused, **kw),
        lambda opt: opt.diagnostics(),
    )


def test_fused_grad_none_and_float32_match_eager():
    """A tensor without a gradient (g = 0, decay and weight decay still act) and float32 tensors; fused
    against eager up to float32 rounding."""
    torch.set_default_dtype(torch.float32)
    runs = []
    for fused in (False, True):
        model, batches = tiny_problem()
        model[2].bias.requires_grad_(False)
        opt = MetaOptimize.from_model(
            model, blocks=[2, 2], base="adamw", meta="adam", alpha0=1e-2, fused=fused
        )
        train(model, opt, batches)
        assert all(p.dtype == torch.float32 for p in model.parameters())
        runs.append((torch.cat([p.detach().reshape(-1) for p in model.parameters()]), opt.diagnostics()))
    (eager, d_eager), (fused, d_fused) = runs
    torch.testing.assert_close(fused, eager, rtol=1e-4, atol=1e-6)
    assert d_fused == pytest.approx(d_eager, rel=1e-3)


def test_fused_resumes_from_an_eager_checkpoint():
    """Same state layout: an eager state_dict loads into a fused optimizer and keeps training; fused
    against eager up to rounding (rtol 1e-9 and an absolute floor of 1e-12 over 20 steps)."""
    kw = dict(base="rmsprop", meta="adam", alpha0=1e-2, meta_lr=1e-2, gamma=0.999)
    model, batches = tiny_problem()
    eager = MetaOptimize.from_model(model, blocks=[2, 2], **kw)
    train(model, eager, batches[:10])
    model2, _ = tiny_problem()
    model2.load_state_dict(model.state_dict())
    fused = MetaOptimize.from_model(model2, blocks=[2, 2], fused=True, **kw)
    fused.load_state_dict(copy.deepcopy(eager.state_dict()))  # load_state_dict may share tensors
    train(model, eager, batches[10:])
    train(model2, fused, batches[10:])
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert fused.state_dict()["state"].keys() == eager.state_dict()["state"].keys()


def test_fused_skips_a_non_finite_step():
    """Bitwise: no kernel runs, and parameters, state and β are untouched."""
    model, batches = tiny_problem()
    opt = MetaOptimize.from_model(model, blocks=[2, 2], base="adamw", meta="adam", alpha0=1e-2, fused=True)
    train(model, opt, batches[:3])
    before = [p.detach().clone() for p in model.parameters()]
    state = {k: v.clone() for k, v in opt.state[model[0].weight].items()}
    beta = opt.state["metaoptimize"]["beta"].clone()
    opt.zero_grad()
    F.cross_entropy(model(batches[3][0]), batches[3][1]).backward()
    model[0].weight.grad[0, 0] = math.inf
    calls = _fused.calls()
    opt.step()
    assert _fused.calls() == calls
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(torch.equal(v, opt.state[model[0].weight][k]) for k, v in state.items())
    assert torch.equal(beta, opt.state["metaoptimize"]["beta"])
    assert opt.state["metaoptimize"]["step"] == 3 and opt.diagnostics()["skipped_steps"] == 1.0


@pytest.mark.parametrize("base", ["adamw", "sgdm"])
def test_fused_does_not_recompile_when_alpha_and_bias_corrections_change(base):
    """The step's floats (α, κα, bias corrections) change every step: no recompilation after warm-up."""
    from torch._dynamo.utils import counters

    model, batches = tiny_problem()
    opt = MetaOptimize(model.parameters(), base=base, meta="lion", alpha0=1e-2, meta_lr=0.1, fused=True)
    train(model, opt, batches[:2])
    graphs, alpha = counters["stats"]["unique_graphs"], opt.diagnostics()["alpha"]
    train(model, opt, batches[2:12])
    assert opt.diagnostics()["alpha"] != alpha
    assert counters["stats"]["unique_graphs"] == graphs


# ----------------------------------------------------------------- batched runs
# docs/optimizers/README.md §6, docs/optimizers/metaoptimize.md §11: R members stepped as one optimizer
# against each member alone, on the harness's MLP (tests/optimizers/batched.py).


def _config(name: str) -> dict:
    cfg = yaml.safe_load((Path(__file__).parents[2] / "configs" / "optimizer" / f"{name}.yaml").read_text())
    return {k: v for k, v in cfg.items() if k not in ("name", "fused", "blocks")}


# alpha0 1e-6 barely moves the weights in 200 steps; the larger ones make every rule's trajectory count
BATCHED_CASES = {
    "config": _config("metaoptimize"),  # Table 1's metaoptimize.yaml at its defaults
    "config_lion": _config("metaoptimize_lion"),
    "adamw_adam": _config("metaoptimize") | {"alpha0": 1e-2, "meta_lr": 1e-2, "weight_decay": 0.1},
    "sgdm_rmsprop_paper": dict(base="sgdm", meta="rmsprop", alpha0=0.05, meta_lr=1e-2, normalization="paper"),
    "rmsprop_adam_paper": dict(base="rmsprop", meta="adam", alpha0=1e-2, meta_lr=1e-2, normalization="paper"),
    "lion_lion": _config("metaoptimize_lion") | {"alpha0": 1e-3, "meta_lr": 1e-2, "gamma": 0.99},
    "package": dict(base="adamw", meta="lion", alpha0=1e-2, meta_lr=1e-2, normalization="package"),
    "fixed": dict(base="adamw", meta="fixed", alpha0=1e-2),
}


def _make(params, runs, hp):
    return MetaOptimize(params, runs=runs, **hp)


def _make_blocks(params, runs, hp):
    """Two blocks (weights, biases), the second with its own weight decay."""
    return MetaOptimize(
        [{"params": params[0::2]}, {"params": params[1::2], "weight_decay": 0.0}], runs=runs, **hp
    )


def _members(hp: dict, vary: bool = True) -> list[Member]:
    return [Member(seed=r, hp=hp | ({"alpha0": hp["alpha0"] * (1 + r)} if vary else {})) for r in range(4)]


@pytest.mark.parametrize("vary", [False, True], ids=["seeds", "seeds_and_alpha0"])
@pytest.mark.parametrize("case", list(BATCHED_CASES))
def test_batched_matches_alone(case, vary):
    """Every member of a batched group follows its run alone bit for bit over 200 steps: its per-member
    scalars enter the run alone's calls on its slices (``_runs.foreach_scaled``)."""
    assert_batched_matches_alone(_make, _members(BATCHED_CASES[case], vary), bitwise=True)


@pytest.mark.parametrize("case", ["adamw_adam", "lion_lion"])
def test_batched_blocks_match_alone(case):
    assert_batched_matches_alone(_make_blocks, _members(BATCHED_CASES[case]), bitwise=True)


@pytest.mark.parametrize("at", [0, 50], ids=["first_step", "mid_run"])
@pytest.mark.parametrize("case", ["config", "adamw_adam", "package", "sgdm_rmsprop_paper"])
def test_batched_non_finite_member_skips_alone(case, at):
    """A member whose gradient holds a NaN skips that step alone: its step count and bias-correction
    products lag the others'."""
    assert_batched_matches_alone(_make, _members(BATCHED_CASES[case]), bitwise=True, nonfinite=(1, at))


@pytest.mark.parametrize("case", ["config", "package"])
def test_batched_resume_is_bitwise(case):
    assert_batched_resume_bitwise(_make, _members(BATCHED_CASES[case]), nonfinite=(2, 30))


def test_batched_worst_gap_and_per_member_values():
    gap = max(worst_gap(_make, _members(BATCHED_CASES[c])) for c in ("config", "adamw_adam", "package"))
    print(f"metaoptimize: worst relative gap batched vs alone over 200 steps: {gap:.2e}")
    assert gap == 0.0
    params = [torch.zeros(4, 3, requires_grad=True), torch.zeros(4, requires_grad=True)]
    d = MetaOptimize(params, base="adamw", meta="adam", alpha0=[1.0, 2.0, 3.0, 4.0], runs=4).diagnostics()
    assert d["alpha"] == pytest.approx([1.0, 2.0, 3.0, 4.0], rel=1e-15)
    assert d["z"] == [0.0] * 4 and d["skipped_steps"] == [0] * 4
    assert optimizers.registry.batch_keys("metaoptimize") == ("alpha0",)


def test_batched_registry_build():
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.set_(torch.stack([p.detach().clone()] * 4))
    cfg = {"name": "metaoptimize", **_config("metaoptimize"), "blocks": "scalar", "alpha0": [1e-6, 1e-5] * 2}
    opt = optimizers.registry.build(cfg, model, runs=4)
    assert opt.runs == 4 and opt.state["metaoptimize"]["beta"].shape == (4, 1)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(runs=3), "leading run dimension of 3"),
        (dict(runs=0), "runs must be"),
        (dict(runs=4, alpha0=[1e-3, 1e-3]), "alpha0 must be a number or 4 numbers"),
        (dict(runs=4, alpha0=[1e-3, 0.0, 1e-3, 1e-3]), "alpha0"),
        (dict(alpha0=[1e-3] * 4), "alpha0 must be a number"),
        (dict(runs=4, fused=True), "fused=True and runs"),
    ],
)
def test_batched_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        MetaOptimize(
            [torch.zeros(4, 2, requires_grad=True)],
            **({"base": "adamw", "meta": "adam", "alpha0": 1e-3} | kw),
        )
