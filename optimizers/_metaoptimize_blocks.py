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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

RESNET_COUNTS = {"resnet18": [3, 12, 15, 15, 15, 2], "resnet50": [3, 30, 39, 57, 30, 2]}
RESNET_NAMES = ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
CONTINUAL_CNN = {"others": ("conv1.", "conv2.", "fc1."), "last_layer": ("fc2.",)}

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
