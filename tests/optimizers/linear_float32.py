"""A Table 1-shaped batched group against its runs alone, in float32 (tests/optimizers/batched.py is float64).

Each member is Letter's multinomial logistic regression (weight ``[26, 16]``, bias ``[26]``, batch 16) on
its own random data from its own seed, in float32 as the LIBSVM task runs it. Batched, a weight slice is
1664 bytes (a whole number of 64-byte lines: views of it are aligned as a fresh tensor) and a bias slice
104 bytes (not): both cases of every per-member reduction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from optimizers._runs import split_diagnostics

FEATURES, CLASSES, BATCH = 16, 26, 16
MakeOpt = Callable[[list[torch.Tensor], int | None, dict[str, Any]], torch.optim.Optimizer]


def _member(seed: int, steps: int) -> tuple[list[torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(CLASSES, FEATURES, generator=g) * 0.1, torch.randn(CLASSES, generator=g) * 0.1]
    data = [
        (torch.randn(BATCH, FEATURES, generator=g), torch.randint(0, CLASSES, (BATCH,), generator=g))
        for _ in range(steps)
    ]
    return params, data


def _grads(params: list[torch.Tensor], batch: tuple[torch.Tensor, torch.Tensor]) -> list[torch.Tensor]:
    ps = [p.detach().clone().requires_grad_(True) for p in params]
    x, y = batch
    return list(torch.autograd.grad(F.cross_entropy(F.linear(x, ps[0], ps[1]), y), ps))


def assert_float32_batched_is_alone_bitwise(
    make_opt: MakeOpt, hps: list[dict[str, Any]], steps: int = 60, nonfinite: tuple[int, int] | None = None
) -> None:
    """Every member's parameters (bits, signed zeros included) and diagnostics after every step equal its
    run alone's; ``nonfinite=(member, step)`` puts a NaN in that member's gradient at that step."""
    members = [_member(seed, steps) for seed in range(len(hps))]
    alone_params, alone_diags = [], []
    for r, ((params, data), hp) in enumerate(zip(members, hps, strict=True)):
        ps = [p.clone().requires_grad_(True) for p in params]
        opt = make_opt(ps, None, hp)
        trail, diags = [], []
        for k in range(steps):
            grads = _grads(ps, data[k])
            if nonfinite == (r, k):
                grads[0][0, 0] = float("nan")
            for p, gr in zip(ps, grads, strict=True):
                p.grad = gr
            opt.step()
            trail.append([p.detach().clone() for p in ps])
            diags.append({key: float(v) for key, v in opt.diagnostics().items()})
        alone_params.append(trail)
        alone_diags.append(diags)

    stacked = [torch.stack([m[0][i] for m in members]).requires_grad_(True) for i in range(2)]
    keys = hps[0].keys()
    hp = {k: hps[0][k] if all(h[k] == hps[0][k] for h in hps) else [h[k] for h in hps] for k in keys}
    opt = make_opt(stacked, len(hps), hp)
    for k in range(steps):
        per_member = [_grads([p[r] for p in stacked], members[r][1][k]) for r in range(len(hps))]
        if nonfinite is not None and nonfinite[1] == k:
            per_member[nonfinite[0]][0][0, 0] = float("nan")
        for i, p in enumerate(stacked):
            p.grad = torch.stack([grads[i] for grads in per_member])
        opt.step()
        diags = split_diagnostics(opt.diagnostics(), len(hps))
        for r in range(len(hps)):
            for got, want in zip([p.detach()[r] for p in stacked], alone_params[r][k], strict=True):
                assert got.dtype == torch.float32
                assert torch.equal(got.view(torch.int32), want.view(torch.int32)), f"member {r} step {k}"
            assert diags[r] == alone_diags[r][k], f"member {r} step {k}: {diags[r]} vs {alone_diags[r][k]}"
