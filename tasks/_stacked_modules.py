"""R copies of any ``nn.Module`` as one module whose parameters carry a leading run dimension.

The batched-run side of a task whose model is not a linear layer (tasks/base.py, docs/optimizers/README.md
§6): :class:`StackedModules` holds ``torch.func.stack_module_state`` of the members' models under the
members' own parameter names (so block presets such as MetaOptimize's ``continual_cnn`` see the names
a run alone has), and its forward is ``vmap(functional_call)`` of one template over the run dimension.
:meth:`StackedModules.member` is member r as an ordinary module whose tensors are views of row r, for
the code paths a run alone takes (evaluation, metric buffers). :func:`grouped_conv2d` and
:func:`batch1_linear` are the members' layers as single ops, for a hand-batched forward.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap


def _owner(root: torch.nn.Module, dotted: str) -> tuple[torch.nn.Module, str]:
    """The submodule holding ``dotted`` (created empty on the way where missing) and the leaf name."""
    *path, leaf = dotted.split(".")
    module = root
    for part in path:
        child = module._modules.get(part)
        if child is None:
            child = torch.nn.Module()
            module.add_module(part, child)
        module = child
    return module, leaf


class StackedModules(torch.nn.Module):
    """The members' parameters and buffers stacked along dim 0 (member r is row r); ``forward(x)`` takes
    ``x`` with a leading run dimension and runs each member on its own slice."""

    def __init__(
        self,
        models: Sequence[torch.nn.Module],
        forward: Callable[[StackedModules, torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """``forward(stacked, x)``, where given, replaces ``vmap(functional_call)``: a hand-batched forward
        of the same arithmetic (vmap's rule for a batch-1 ``linear`` backward costs a transposed copy of
        each weight gradient, more than R runs alone; tasks/continual_cifar100.py)."""
        super().__init__()
        if not models:
            raise ValueError("StackedModules needs at least one model")
        params, buffers = stack_module_state(list(models))
        self.runs = len(models)
        # the template only lends its forward; kept out of the module tree (no parameters of its own)
        self.__dict__["_template"] = copy.deepcopy(models[0]).to("meta")
        for name, value in params.items():
            owner, leaf = _owner(self, name)
            owner.register_parameter(leaf, torch.nn.Parameter(value))
        for name, value in buffers.items():
            owner, leaf = _owner(self, name)
            owner.register_buffer(leaf, value)
        self._stacked_forward = forward
        self._forward = vmap(self._member_forward)

    def _member_forward(self, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        return functional_call(self._template, params, (x,))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._stacked_forward is not None:
            return self._stacked_forward(self, x)
        return self._forward(dict(self.named_parameters()), x)

    def member(self, r: int) -> torch.nn.Module:
        """Member ``r`` as its own model: the template's modules with every parameter and buffer a view
        of row ``r`` (writes to its buffers land in the stack; its forward is the run alone's code)."""
        view = copy.deepcopy(self._template)
        for name, value in self.named_parameters():
            owner, leaf = _owner(view, name)
            del owner._parameters[leaf]
            owner.__dict__[leaf] = value[r]
        for name, value in self.named_buffers():
            owner, leaf = _owner(view, name)
            owner._buffers[leaf] = value[r]
        return view


def grouped_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, padding: int) -> torch.Tensor:
    """Member r's ``conv2d(x[r:r+1], weight[r], bias[r])`` for every r as one grouped convolution:
    ``x`` ``[R, C, H, W]`` (one image per member), ``weight`` ``[R, O, C, k, k]`` -> ``[R, O, H', W']``."""
    runs, channels, height, width = x.shape
    out = F.conv2d(
        x.reshape(1, runs * channels, height, width),
        weight.flatten(0, 1),
        bias.flatten(),
        padding=padding,
        groups=runs,
    )
    return out.view(runs, -1, *out.shape[2:])


def batch1_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Member r's ``linear(x[r], weight[r], bias[r])`` for one input row per member: ``x`` ``[R, in]``,
    ``weight`` ``[R, out, in]`` -> ``[R, out]``. Elementwise, so the weight gradient is one outer
    product in the weight's own layout (a batched matmul would write it transposed, then copy it)."""
    return (weight * x.unsqueeze(1)).sum(-1) + bias
