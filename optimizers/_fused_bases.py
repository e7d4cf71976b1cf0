"""Base optimizers whose step a wrapper may run inside its own fused pass (Mechanic's ``fused=True``).

Mechanic's minimal traffic (``benchmarks/optimizer_overhead.py``) has the base step and Mechanic's last
pass share one read of every tensor, which needs the base's per-parameter rule rather than its ``step()``.
A base offers it when it was built fused (``fused=True``; docs/optimizers/mechanic.md §2.3):

* an optimizer of ours, through a ``fused_move`` rule and a ``fused_moves()`` method (``Lion``);
* torch's ``SGD`` with momentum and ``AdamW`` (or ``Adam`` without weight decay), through the adapters
  below: torch's rules, for the settings they reproduce (SGD: dampening 0, no Nesterov; Adam: no AMSGrad;
  neither ``maximize``, ``capturable``, ``differentiable`` nor a tensor lr). Other settings keep the
  base's own step.

A rule is ``move(x, *tensors, *scalars) -> x'``: it updates the base's state tensors in place and returns
the new parameter without writing it. :func:`moves` gives, per param group with gradients, the tensor
lists (parameters first) and the scalars, with the state created; the caller runs it after its own
non-finite check, instead of ``base.step()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from optimizers import _fused
from optimizers._common import grads_with_params

Move = Callable[..., torch.Tensor]
Moves = list[tuple[list[list[torch.Tensor]], tuple[float, ...]]]


def fusable(base: torch.optim.Optimizer) -> bool:
    """Whether ``base``'s step can run inside a wrapper's fused pass (module docstring)."""
    if hasattr(base, "fused_moves"):
        return bool(getattr(base, "fused", False))
    adapter = _adapter(base)
    return (
        adapter is not None
        and getattr(base, "runs", None) is None
        and all(adapter.fusable(group) for group in base.param_groups)
    )


def rule(base: torch.optim.Optimizer) -> Move:
    """The per-parameter rule of a :func:`fusable` base."""
    return type(base).fused_move if hasattr(base, "fused_moves") else _adapter(base).move


def moves(base: torch.optim.Optimizer) -> Moves:
    """One step of a :func:`fusable` base as arguments of its :func:`rule`, per param group with
    gradients: ``([params, *tensors], scalars)``, its state created (and Adam's step counts advanced);
    nothing is moved."""
    if hasattr(base, "fused_moves"):
        return base.fused_moves()
    group_moves, out = _adapter(base).group_moves, []
    for group in base.param_groups:
        params, grads = grads_with_params(group["params"])
        if params:
            out.append(group_moves(base, group, params, grads))
    return out


def _sgd_moves(base: torch.optim.Optimizer, group: dict, params: list, grads: list) -> tuple:
    """torch's SGD momentum buffers (created as zeros) and one group's ``(lr, momentum, weight_decay)``."""
    bufs = []
    for p in params:  # torch's first step sets buf = d, which 0 * momentum + d is, exactly
        state = base.state[p]
        if state.get("momentum_buffer") is None:
            state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        bufs.append(state["momentum_buffer"])
    scalars = (float(group["lr"]), float(group["momentum"]), float(group["weight_decay"]))
    return [params, grads, bufs], scalars


def _adam_moves(base: torch.optim.Optimizer, group: dict, params: list, grads: list) -> tuple:
    """torch's Adam state (as its ``_init_group`` with ``fused=True``), the step counts advanced, and the
    bias corrections of each parameter's count as one-element tensors (one host read of the counts)."""
    for p in params:
        state = base.state[p]
        if len(state) == 0:
            state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    states = [base.state[p] for p in params]
    steps = [st["step"] for st in states]
    torch._foreach_add_(steps, 1.0)
    lr, (beta1, beta2) = float(group["lr"]), group["betas"]
    counts = torch.stack(steps).tolist()
    step_sizes = _fused.per_tensor_scalars([lr / (1 - beta1**n) for n in counts], params)
    bc2_sqrts = _fused.per_tensor_scalars([math.sqrt(1 - beta2**n) for n in counts], params)
    tensors = [params, grads, [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states]]
    decay = 1.0 - lr * float(group["weight_decay"])
    return [*tensors, step_sizes, bc2_sqrts], (decay, float(beta1), float(beta2), float(group["eps"]))


def _plain(group: dict) -> bool:
    """A group built with ``fused=True`` and none of the options the rules leave out."""
    return (
        bool(group.get("fused"))
        and not group["maximize"]
        and not group.get("differentiable", False)
        and not group.get("capturable", False)
        and not isinstance(group["lr"], torch.Tensor)
    )


def _adam_fusable(group: dict) -> bool:
    """A torch Adam/AdamW group that :func:`adamw_move` reproduces: decoupled decay (or none), no AMSGrad,
    float betas."""
    return (
        _plain(group)
        and not group["amsgrad"]
        and (group.get("decoupled_weight_decay", False) or group["weight_decay"] == 0)
        and not any(isinstance(b, torch.Tensor) for b in group["betas"])
    )


def _sgd_fusable(group: dict) -> bool:
    """A torch SGD group that :func:`sgd_momentum_move` reproduces, built with ``fused=True``."""
    return _plain(group) and group["momentum"] > 0 and group["dampening"] == 0 and not group["nesterov"]


def sgd_momentum_move(
    x: torch.Tensor, g: torch.Tensor, buf: torch.Tensor, lr: float, momentum: float, weight_decay: float
) -> torch.Tensor:
    """``torch.optim.SGD``'s rule (dampening 0): ``d = g + wd x``, ``buf <- momentum buf + d`` (in place),
    returns ``x - lr buf``."""
    buf.mul_(momentum).add_(g + x * weight_decay)
    return x - buf * lr


def adamw_move(
    x: torch.Tensor,
    g: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    step_size: torch.Tensor,
    bc2_sqrt: torch.Tensor,
    decay: float,
    beta1: float,
    beta2: float,
    eps: float,
) -> torch.Tensor:
    """``torch.optim.AdamW``'s rule: ``m <- m + (1 - beta1)(g - m)`` (torch's lerp), ``v <- beta2 v +
    (1 - beta2) g^2`` (in place), returns ``x (1 - lr wd) - step_size m / (sqrt(v) / sqrt(bc2) + eps)`` with
    ``step_size = lr / bc1`` (one-element tensors: a count per parameter)."""
    m.add_((g - m) * (1.0 - beta1))
    v.mul_(beta2).add_(g * g * (1.0 - beta2))
    return x * decay - m / (v.sqrt() / bc2_sqrt + eps) * step_size


@dataclass(frozen=True)
class _Adapter:
    """A torch optimizer class's rule: which groups it reproduces, the rule, and one group's arguments."""

    fusable: Callable[[dict], bool]
    move: Move
    group_moves: Callable[..., tuple]


_SGD = _Adapter(_sgd_fusable, sgd_momentum_move, _sgd_moves)
_ADAM = _Adapter(_adam_fusable, adamw_move, _adam_moves)
_ADAPTERS: dict[type, _Adapter] = {torch.optim.SGD: _SGD, torch.optim.Adam: _ADAM, torch.optim.AdamW: _ADAM}


def _adapter(base: torch.optim.Optimizer) -> _Adapter | None:
    """The adapter of torch's class that ``base`` is (the registry's baselines subclass torch's)."""
    return next((_ADAPTERS[c] for c in type(base).__mro__ if c in _ADAPTERS), None)
