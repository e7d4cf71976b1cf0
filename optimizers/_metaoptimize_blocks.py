"""Step-size blocks for MetaOptimize: turn a model and a block spec into named param groups.

docs/optimizers/metaoptimize.md §6. A block is a set of parameter tensors that shares one step size
α_k = exp(β_k). Every parameter of ``model.named_parameters()`` belongs to exactly one block, as in
the authors' ``HF.py``, which partitions ``net.parameters()`` (frozen tensors included).

Accepted block specifications:

- ``"scalar"``: one block (``HF.py``'s ``'scalar'``);
- ``"per_tensor"``: one block per tensor, named after it;
- ``"resnet18"`` / ``"resnet50"`` (aliases ``"resnet18_blocks"``, ``"resnet50_blocks"``): stem, layer1..4,
  head, matched by name (``conv1``/``bn1`` stem; ``fc`` or ``linear`` head), so both torchvision's
  ResNets and the authors' CIFAR ResNet work; the counts are checked against ``HF.py``'s presets
  [3, 12, 15, 15, 15, 2] and [3, 30, 39, 57, 30, 2];
- ``"last_layer_and_others"``: [n - 2, 2] (continual ``HF.py``); ``"continual_cnn"`` is the same
  split, checked against the SimpleCNN names (conv1, conv2, fc1 | fc2);
- a list of ints (or the string ``"[n1,n2,...]"``): contiguous counts in parameter order;
- a list of lists of parameter names: any partition; a dict ``{block_name: [param names]}`` likewise.

Each block's scalars live in ``state["metaoptimize"]`` (docs/optimizers/metaoptimize.md §2), one column
per block: :func:`block_scalars` creates them, :func:`add_block` appends a block, :func:`block_alphas`
reads α_k and :func:`block_z` sums z_k over a block's tensors.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from optimizers._common import foreach_dot, global_value
from optimizers._runs import CPU_ALIGNMENT, aligned_members

RESNET_COUNTS = {"resnet18": [3, 12, 15, 15, 15, 2], "resnet50": [3, 30, 39, 57, 30, 2]}
RESNET_NAMES = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
CONTINUAL_CNN = {"others": ("conv1.", "conv2.", "fc1."), "last_layer": ("fc2.",)}

MAX_SLICE_CLONES = 4  # more misaligned member slices: one padded copy, fewer calls than a clone each

BlockSpec = str | Sequence[int] | Sequence[Sequence[str]] | Mapping[str, Sequence[str]]


def _resnet_block(name: str) -> str | None:
    head = name.split(".", 1)[0]
    if head in ("conv1", "bn1"):
        return "stem"
    if head in ("layer1", "layer2", "layer3", "layer4"):
        return head
    if head in ("fc", "linear"):
        return "head"
    return None


def _by_name(
    named: list[tuple[str, torch.Tensor]], parts: Mapping[str, Sequence[str]]
) -> dict[str, list[str]]:
    known = {n for n, _ in named}
    seen: set[str] = set()
    for block, names in parts.items():
        for n in names:
            if n not in known:
                raise ValueError(
                    f"blocks: block {block!r} names {n!r}, which is not a parameter of the model"
                )
            if n in seen:
                raise ValueError(f"blocks: parameter {n!r} is in more than one block")
            seen.add(n)
    missing = [n for n, _ in named if n not in seen]
    if missing:
        raise ValueError(f"blocks: parameters {missing} are in no block")
    order = {n: i for i, (n, _) in enumerate(named)}
    return {k: sorted(v, key=order.__getitem__) for k, v in parts.items()}


def _counts(named: list[tuple[str, torch.Tensor]], counts: Sequence[int]) -> dict[str, list[str]]:
    if any(not isinstance(c, int) or c <= 0 for c in counts) or sum(counts) != len(named):
        raise ValueError(f"blocks: counts {list(counts)} must be positive and add up to {len(named)} tensors")
    out, start = {}, 0
    for k, c in enumerate(counts):
        out[f"block{k}"] = [n for n, _ in named[start : start + c]]
        start += c
    return out


def partition(model: torch.nn.Module, blocks: BlockSpec) -> dict[str, list[str]]:
    """Block name -> parameter names (in ``named_parameters()`` order), for the spec ``blocks``."""
    named = list(model.named_parameters())
    if not named:
        raise ValueError("blocks: the model has no parameters")
    if isinstance(blocks, str):
        spec = blocks.removesuffix("_blocks")
        if spec == "scalar":
            return {"all": [n for n, _ in named]}
        if spec == "per_tensor":
            return {n: [n] for n, _ in named}
        if spec in RESNET_COUNTS:
            out: dict[str, list[str]] = {k: [] for k in RESNET_NAMES}
            for n, _ in named:
                block = _resnet_block(n)
                if block is None:
                    raise ValueError(
                        f"blocks={blocks!r}: parameter {n!r} is not in a ResNet stem, layer or head"
                    )
                out[block].append(n)
            got = [len(v) for v in out.values()]
            if got != RESNET_COUNTS[spec] or [n for v in out.values() for n in v] != [n for n, _ in named]:
                raise ValueError(
                    f"blocks={blocks!r}: got tensor counts {got}, expected {RESNET_COUNTS[spec]}"
                )
            return out
        if spec in ("last_layer_and_others", "continual_cnn"):
            if len(named) < 3:
                raise ValueError(f"blocks={blocks!r} needs at least 3 parameter tensors")
            out = {"others": [n for n, _ in named[:-2]], "last_layer": [n for n, _ in named[-2:]]}
            if spec == "continual_cnn":
                for block, prefixes in CONTINUAL_CNN.items():
                    if not all(n.startswith(prefixes) for n in out[block]) or len(out[block]) != 2 * len(
                        prefixes
                    ):
                        raise ValueError(
                            f"blocks={blocks!r}: {out[block]} is not {prefixes} (weights and biases)"
                        )
            return out
        if spec.startswith("[") and spec.endswith("]"):
            return _counts(named, [int(x) for x in spec[1:-1].split(",")])
        raise ValueError(f"blocks={blocks!r} is not a known preset")
    if isinstance(blocks, Mapping):
        return _by_name(named, blocks)
    blocks = list(blocks)
    if blocks and all(isinstance(b, int) for b in blocks):
        return _counts(named, blocks)
    if blocks and all(isinstance(b, Sequence) and not isinstance(b, str) for b in blocks):
        return _by_name(named, {f"block{k}": b for k, b in enumerate(blocks)})
    raise ValueError(f"blocks={blocks!r}: expected a preset name, counts or lists of parameter names")


def param_groups(model: torch.nn.Module, blocks: BlockSpec) -> list[dict[str, Any]]:
    """One param group per block, ``{"params": [...], "name": block}``, in block order."""
    params = dict(model.named_parameters())
    return [
        {"params": [params[n] for n in names], "name": k} for k, names in partition(model, blocks).items()
    ]


# ------------------------------------------------------------------ the block scalars
def block_scalars(runs: int | None, device: torch.device) -> dict[str, Any]:
    """``state["metaoptimize"]`` with no block yet: the (K,) float64 tensors ``beta``, ``mbar``, ``vbar``,
    ``z``, the counters and the running products of the bias corrections; batched (§11), [R, K] and the
    counters [R]."""
    zeros = torch.zeros((0,) if runs is None else (runs, 0), dtype=torch.float64, device=device)
    count, one = (0, 1.0) if runs is None else (np.zeros(runs, dtype=np.int64), np.ones(runs))
    return {
        "beta": zeros.clone(),
        "mbar": zeros.clone(),
        "vbar": zeros.clone(),
        "z": zeros.clone(),
        "step": count,
        "skipped_steps": count,
        "lam_acc": one,
        "rho_acc": one,
        "lam_bar_acc": one,
        "rho_bar_acc": one,
    }


def add_block(meta: dict[str, Any], alpha0: Any, runs: int | None) -> None:
    """Append one block's column to the block scalars: β = log alpha0, mbar = vbar = z = 0."""
    beta0 = math.log(alpha0) if runs is None else [[math.log(a)] for a in alpha0]
    initial = {"beta": beta0, "mbar": 0.0, "vbar": 0.0, "z": 0.0}
    for key, value in initial.items():  # float64 beta_0 (docs/optimizers/metaoptimize.md §10)
        column = meta[key].new_tensor(value).expand(meta[key].shape[:-1] + (1,))
        meta[key] = torch.cat([meta[key], column], dim=-1)


def block_alphas(beta: torch.Tensor, runs: int | None) -> list[Any]:
    """α_k = exp(β_k) per block, read to the host: floats, or per member ``[R]`` arrays (each member's
    row exponentiated alone, as its run alone's ``[K]`` tensor is: a vectorised and a scalar exp need
    not round alike)."""
    if runs is None:
        return beta.exp().tolist()
    return list(np.array([row.tolist() for row in torch._foreach_exp(beta.unbind(0))]).T)


def block_z(h: list[torch.Tensor], g: list[torch.Tensor], runs: int | None) -> torch.Tensor:
    """z_k = Σ_i <h_i, g_i> (float64; step 2): per tensor ``torch.dot``, summed over the block; batched,
    ``[R]``, each member by the same calls on its slices, so that it equals its run alone's bit for bit:
    BLAS ``dot`` sums in an order that depends on the data's alignment, so a slice not aligned as the run
    alone's own tensors are (:func:`member_slices`) is copied first."""
    if runs is None:
        return global_value(torch.stack(foreach_dot(h, g)).sum()).to(torch.float64)
    hs, gs = [member_slices(x, runs) for x in h], [member_slices(y, runs) for y in g]
    dots = [torch.dot(x[r], y[r]) for r in range(runs) for x, y in zip(hs, gs, strict=True)]
    # each member's row of [R, T] is summed by the reduction a run alone runs on its [T] (contiguous rows)
    return torch.stack(dots).view(runs, len(h)).sum(1).to(torch.float64)


def member_slices(t: torch.Tensor, runs: int) -> list[torch.Tensor]:
    """The members' slices of ``t`` flattened, each aligned as a fresh tensor is (on a CPU allocation's
    64-byte boundary): views where they are; elsewhere copies, one per slice, or for many slices one copy
    into rows padded to whole 64-byte lines (fewer calls). On other devices, copies."""
    rows = t.reshape(runs, -1).unbind(0)
    if t.device.type != "cpu":
        return [r.clone() for r in rows]
    misaligned = [i for i, r in enumerate(rows) if r.data_ptr() % CPU_ALIGNMENT]
    if len(misaligned) <= MAX_SLICE_CLONES:
        return [r.clone() if i in misaligned else r for i, r in enumerate(rows)]
    return aligned_members(runs, (rows[0].numel(),), t).copy_(t.reshape(runs, -1)).unbind(0)
