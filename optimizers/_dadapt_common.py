"""Helpers shared by the D-Adaptation (SGD, Adam, AdaGrad) and Prodigy modules.

``AdamForm``, the step of D-Adapt Adam and Prodigy (eager skeleton and the host part of the fused one),
the non-finite start of a step (``grads_or_skip``), coupled decay, the end-of-step bookkeeping, the
growth-rate check, the shared-lr rule, the Adam-style bias correction, the sharded-training all-reduce
(docs/optimizers/README.md §4), the ``d`` / ``d_lr`` diagnostics (docs/optimizers/README.md §2), a fast
form of the non-finite check and a shared scratch buffer. The rules: docs/optimizers/dadaptation.md and
docs/optimizers/prodigy.md.

Speed notes (issue 4): on CPU, every out-of-place ``torch._foreach_*`` op allocates a parameter-sized
temporary for *every* tensor at once; glibc hands such a >32 MB block back to the kernel when it is
freed (``M_TRIM_THRESHOLD``), so the next step page-faults it in again (about 25k faults and half the
step time on a 9.4M-parameter MLP). The modules therefore compute their temporaries one tensor at a
time into ``scratch_like`` views (``out=``) of one buffer kept across steps (a workspace, not state),
and keep the state updates as in-place ``_foreach_*`` ops, which allocate nothing. The non-finite
check (``optimizers._common``'s policy, unchanged) costs no pass of its own once the state exists: it
reads the first per-tensor reduction over the gradients that the step computes anyway, before any
change (``can_fuse_check``), and falls back to the exact inf-norm check only when that reduction is not
finite; elsewhere it is ``optimizers._common.skip_if_nonfinite`` (its own pass over the gradients). Every
elementwise op and every reduction keeps the packages' kernels and order (l1 norms as ``abs().sum()``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from optimizers._common import (
    check_positive,
    closure_loss,
    foreach_dot,
    grads_with_params,
    host_floats,
    skip_if_nonfinite,
)
from optimizers._runs import (
    add_scaled_,
    dots,
    host_map,
    host_values,
    member_values,
    members_step,
    only_members,
    per_member,
    total,
)

__all__ = [
    "AdamForm",
    "add_coupled_decay",
    "add_scaled",
    "all_reduce_sum",
    "batched_lr",
    "bias_correction",
    "can_fuse_check",
    "check_growth_rate",
    "d_diagnostics",
    "every_member",
    "dot_into",
    "finish_step",
    "first_device",
    "foreach_dot",
    "group_grads",
    "grads_or_skip",
    "host_floats",
    "host_values_after",
    "max_lr",
    "member_scales",
    "moment_updates",
    "scratch",
    "scratch_like",
    "shared_lr",
    "skip_if_reduction_nonfinite",
    "uses_fsdp",
    "whole_list",
    "workspace",
]

GroupGrads = list[tuple[list[torch.Tensor], list[torch.Tensor]]]
Group = dict[str, Any]  # a param group
Tensors = list[torch.Tensor]


def check_growth_rate(value: float) -> None:
    """Raise ValueError naming ``growth_rate`` unless it is a number >= 1 (``inf`` allowed)."""
    if not isinstance(value, int | float) or math.isnan(value) or value < 1.0:
        raise ValueError(f"growth_rate must be a number >= 1 (inf allowed), got {value!r}")


def group_grads(groups: Iterable[dict[str, Any]]) -> GroupGrads:
    """Per param group: the parameters that have a gradient, and those gradients."""
    return [grads_with_params(group["params"]) for group in groups]


def max_lr(groups: Iterable[dict[str, Any]]) -> float:
    """The largest group lr (the lr the packages use)."""
    return max(group["lr"] for group in groups)


def shared_lr(groups: Sequence[dict[str, Any]], hint: str = "") -> float:
    """The largest group lr; every group's lr must equal it or be 0, as in the packages."""
    lr = max_lr(groups)
    for group in groups:
        if group["lr"] not in [lr, 0.0]:
            raise RuntimeError(
                "Setting different lr values in different parameter groups is only supported for "
                "values of 0" + hint
            )
    return lr


def bias_correction(group: dict[str, Any]) -> float:
    """``sqrt(1 - beta2^(k+1)) / (1 - beta1^(k+1))`` with ``use_bias_correction``, else 1
    (docs/optimizers/dadaptation.md §2.2, docs/optimizers/prodigy.md §2)."""
    if not group["use_bias_correction"]:
        return 1
    beta1, beta2 = group["betas"]

    def bc(k: float) -> float:
        return ((1 - beta2 ** (k + 1)) ** 0.5) / (1 - beta1 ** (k + 1))

    k = group["k"]
    # per member (batched runs) through a run alone's Python float powers (numpy's may differ by an ulp)
    return bc(k) if isinstance(k, int) else host_map(bc, k)


def _scalar(value: Any) -> float | np.ndarray:
    """A float, or a batched run's R values as float64 (docs/optimizers/README.md §6)."""
    return value.astype(np.float64) if isinstance(value, np.ndarray) else float(value)


def d_diagnostics(group: dict[str, Any], d_lr: Any, **extra: Any) -> dict[str, Any]:
    """docs/optimizers/README.md §2: ``d``, ``d_lr``, any extra scalars, then ``skipped_steps``, from the
    scalars of ``group`` (each R values in a batched run, README §6)."""
    return {
        "d": _scalar(group["d"]),
        "d_lr": _scalar(d_lr),
        **{name: _scalar(v) for name, v in extra.items()},
        "skipped_steps": _scalar(group.get("skipped_steps", 0)),
    }


def finish_step(
    opt: torch.optim.Optimizer, pgs: GroupGrads, k: Any, scalars: dict[str, Any], moved: Any = True
) -> None:
    """The bookkeeping of a step that moved: ``scalars`` (the new d and its sums) into every group, each
    parameter's ``step`` and every group's ``k`` (from group 0's ``k`` at the start) + 1; in a batched
    run only for the members in the mask ``moved`` (the others took the early return)."""
    every = moved is True or moved.all()  # adding 1 to every member skips a host-to-tensor copy
    inc = 1 if every else torch.as_tensor(moved)
    for group, (ps, _) in zip(opt.param_groups, pgs, strict=True):
        group.update(scalars)
        for p in ps:
            opt.state[p]["step"] += inc
        group["k"] = k + (1 if every else moved)


def batched_lr(lr: Any, d0: Any, runs: int | None, fused: bool, fsdp: bool) -> tuple[float, Any, Any]:
    """Check ``lr`` and ``d0`` (each a number > 0, or R of them for a batched run, docs/optimizers/README.md
    §6) and the options a batched run refuses; the group's lr (R values: the multiplier 1.0), the members'
    lrs (None when shared) and d0 (a float, or R floats). D-Adapt SGD and Adam."""
    lr, d0 = member_values("lr", lr, runs), member_values("d0", d0, runs)
    for name, values in (("lr", lr), ("d0", d0)):
        for v in np.atleast_1d(values).tolist():
            check_positive(name, v)
    if runs is not None and fused:
        raise ValueError(
            "fused=True and runs: batched runs take the eager rule (docs/optimizers/README.md §6)"
        )
    if runs is not None and fsdp:
        raise ValueError("fsdp_in_use=True and runs: a batched group of runs is not sharded")
    return (lr, None, d0) if isinstance(lr, float) else (1.0, lr, d0)


def add_coupled_decay(
    group: dict[str, Any], ps: list[torch.Tensor], gs: list[torch.Tensor], decouple: bool
) -> None:
    """Coupled weight decay written into ``p.grad`` as the packages do, ``g <- g + wd x``, when ``group``'s
    ``weight_decay`` is not 0 and not ``decouple`` (docs/optimizers/dadaptation.md §2.2,
    docs/optimizers/prodigy.md §2)."""
    if group["weight_decay"] != 0 and not decouple:
        torch._foreach_add_(gs, ps, alpha=group["weight_decay"])


def coupled_decay(g: torch.Tensor, x: torch.Tensor, decay: float, with_decay: bool) -> torch.Tensor:
    """``g + decay x`` inside a fused kernel (``with_decay`` is specialised: x is not read without it);
    a plain function, inlined into the kernels that call it."""
    return g + x * decay if with_decay else g


def uses_fsdp(flag: bool, groups: Iterable[Sequence[torch.Tensor]]) -> bool:
    """The ``fsdp_in_use`` flag, or FSDP-1 flat parameters detected as the packages do
    (docs/optimizers/README.md §4)."""
    params = [p for ps in groups for p in ps]
    if flag and any(isinstance(p, DTensor) for p in params):  # FSDP2's sums are global already
        raise ValueError("fsdp_in_use=True is for FSDP-1 flat parameters; FSDP2 (fully_shard) needs false")
    return flag or any(hasattr(p, "_fsdp_flattened") for p in params)


def first_device(pgs: GroupGrads) -> torch.device:
    """The device of the first parameter that has a gradient (CPU when there is none)."""
    return next((ps[0].device for ps, _ in pgs if ps), torch.device("cpu"))


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    """SUM-all-reduce Python scalars across ranks (docs/optimizers/README.md §4), in float64 on the
    parameters' device."""
    buf = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.tolist()


def scratch_like(
    tensors: Sequence[torch.Tensor],
    cache: dict[Any, torch.Tensor] | None = None,
    tag: str = "",
    views: dict[Any, list[torch.Tensor]] | None = None,
) -> list[torch.Tensor]:
    """Views shaped like each tensor into ONE buffer per (device, dtype, tag), as large as the largest.

    The views alias one another: finish with one tensor's temporary before using the next view. With
    ``cache`` (a workspace dict the optimizer keeps outside its state) the buffer is reused across
    steps, so it is not page-faulted in again each step; its contents never outlive a step. With
    ``views`` too, the views themselves are kept per list of shapes (a small step pays for every slice
    and view it makes); growing a buffer drops them.
    """
    if any(isinstance(t, DTensor) for t in tensors):  # FSDP shards: no flat buffer to view them in
        return [torch.empty_like(t) for t in tensors]
    shapes = (tag, *((t.device, t.dtype, t.shape) for t in tensors))
    if views is not None and shapes in views:
        return views[shapes]
    sizes: dict[tuple[torch.device, torch.dtype, str], int] = {}
    for t in tensors:
        key = (t.device, t.dtype, tag)
        sizes[key] = max(sizes.get(key, 0), t.numel())
    bufs = {} if cache is None else cache
    for key, n in sizes.items():
        if key not in bufs or bufs[key].numel() < n:
            bufs[key] = torch.empty(n, device=key[0], dtype=key[1])
            if views is not None:
                views.clear()  # views of the smaller buffer would keep it alive
    out = [bufs[(t.device, t.dtype, tag)][: t.numel()].view(t.shape) for t in tensors]
    if views is not None and cache is not None:
        views[shapes] = out
    return out


def scratch(opt: torch.optim.Optimizer, tensors: Sequence[torch.Tensor], tag: str = "") -> list[torch.Tensor]:
    """``scratch_like(tensors)`` in ``opt``'s workspace, the views kept across steps too."""
    return scratch_like(tensors, workspace(opt), tag, opt.__dict__.setdefault("_scratch_views", {}))


def can_fuse_check(
    pgs: GroupGrads, groups: Sequence[dict[str, Any]], state: Any, key: str, covers: Callable[[dict], bool]
) -> bool:
    """Whether a reduction this step computes anyway can stand in for the non-finite check.

    That needs a per-tensor reduction over *every* gradient element, taken before anything changes:
    every parameter with a gradient already has its state (``key`` present: no lazy init to undo) and
    ``covers(group)`` holds for every group with gradients (the reduction runs there over the raw
    gradient: e.g. lr > 0, no coupled weight decay written into ``p.grad`` first). NaN and inf in a
    gradient make such a sum (``<g, w>`` with finite w) NaN or inf; a non-finite sum from finite gradients
    (overflow, non-finite state) falls back to the exact check in ``skip_if_reduction_nonfinite``.
    """
    with_grads = [(grp, ps) for grp, (ps, _) in zip(groups, pgs, strict=True) if ps]
    if not all(covers(grp) for grp, _ in with_grads):
        return False
    return all(key in state[p] for _, ps in with_grads for p in ps)


def grads_or_skip(
    opt: torch.optim.Optimizer, key: str, covers: Callable[[dict], bool]
) -> tuple[GroupGrads, list[torch.Tensor], bool] | None:
    """The start of a step under the non-finite policy: the gradients per group (``group_grads``), all of
    them, and whether the check is left to the step's reductions (``can_fuse_check`` with ``key`` and
    ``covers``; the step then calls ``skip_if_reduction_nonfinite``); otherwise the exact check runs here,
    and None means the step is skipped (counted in every group). A batched run (``opt.runs``) leaves the
    check to ``members_step``."""
    groups = opt.param_groups
    pgs = group_grads(groups)
    grads = [g for _, gs in pgs for g in gs]
    if getattr(opt, "runs", None) is not None:
        return pgs, grads, False  # the policy applies per member, in ``members_step``
    check_later = can_fuse_check(pgs, groups, opt.state, key, covers)
    if not check_later and skip_if_nonfinite(grads, *groups):
        return None
    return pgs, grads, check_later


def host_values_after(
    first: Sequence[torch.Tensor], first_values: Any, second: Sequence[torch.Tensor], runs: int | None
) -> tuple[Any, Any]:
    """The host values (``host_values``) of two lists of per-tensor reductions, with one sync for both
    unless ``first``'s are already there (``first_values`` not None: the non-finite check needed them)."""
    if first_values is not None:
        return first_values, host_values(second, runs)
    values = host_values([*first, *second], runs)
    return values[: len(first)], values[len(first) :]


def every_member(moved: Any) -> Any:
    """``moved`` (True, or a batched run's mask of the members that move), or True when the mask holds
    every member: the common step then takes a run alone's paths, with no member to put back."""
    return True if isinstance(moved, np.ndarray) and moved.all() else moved


def dot_into(g: torch.Tensor, t: torch.Tensor, runs: int | None) -> torch.Tensor:
    """``<g, t>`` with ``t`` a scratch temporary: alone ``optimizers._runs.dots``' 0-dim ``torch.dot``;
    batched ``t <- g t`` in place, summed within each member (length R): ``linalg.vecdot``'s own ops, so
    the same bits, without its temporary and reshapes."""
    if runs is None:
        return dots([g], [t], None)[0]
    return total(t.mul_(g), runs)


_HOST_CASTS = {torch.float32: np.float32, torch.float64: np.float64}  # as ``per_member``'s host casts


def member_scales(values: Any, like: Sequence[torch.Tensor]) -> list[Any]:
    """``optimizers._runs.per_member(values, x)`` for each ``x`` in ``like``, the same numbers, with one
    host cast per dtype for the whole list (a small step pays for every cast and reshape it makes)."""
    if not isinstance(values, np.ndarray):
        return [per_member(values, x) for x in like]
    casts: dict[Any, np.ndarray] = {}
    out = []
    for x in like:
        host = _HOST_CASTS.get(x.dtype) if x.device.type == "cpu" else None
        if host is None:
            out.append(per_member(values, x))
            continue
        if host not in casts:
            with np.errstate(over="ignore"):  # beyond float32's range: inf, silently, as torch's cast
                casts[host] = np.asarray(values, dtype=np.float64).astype(host)
        out.append(torch.from_numpy(casts[host].reshape((-1,) + (1,) * (x.dim() - 1))))
    return out


def add_scaled(ys: Sequence[torch.Tensor], xs: Sequence[torch.Tensor], alpha: Any) -> None:
    """``optimizers._runs.add_scaled_`` (the same ops, so the same bits), its per-member scales cast once
    (``member_scales``)."""
    if isinstance(alpha, int | float):
        add_scaled_(ys, xs, alpha)
        return
    torch._foreach_add_(list(ys), torch._foreach_mul(list(xs), member_scales(alpha, xs)))


def workspace(opt: torch.optim.Optimizer) -> dict[Any, torch.Tensor]:
    """``opt``'s scratch buffers for :func:`scratch_like`, reused across steps (dead between steps, so
    not state: ``state_dict`` never holds them)."""
    return opt.__dict__.setdefault("_scratch", {})


def skip_if_reduction_nonfinite(
    values: Sequence[float], grads: Sequence[torch.Tensor], *counters: dict[str, Any]
) -> bool:
    """The non-finite policy given host values of reductions over every gradient (``can_fuse_check``):
    False when they are all finite; otherwise the exact check decides (and counts a skip)."""
    return not all(math.isfinite(v) for v in values) and skip_if_nonfinite(grads, *counters)


CHUNK = 1 << 20  # elements per chunk (4 MB in float32): the arrays of one chunk stay in cache


def whole_list(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether ``tensors`` are small (under ``CHUNK`` elements in all, no FSDP shard): then whole-list
    ``_foreach`` ops with allocated temporaries, since a small model's step costs calls, not the page
    faults of the module docstring; else one tensor at a time in scratch. Same ops, so the same bits."""
    return sum(t.numel() for t in tensors) < CHUNK and not any(isinstance(t, DTensor) for t in tensors)


def moment_updates(
    ms: Sequence[torch.Tensor] | None,
    vs: Sequence[torch.Tensor],
    ss: Sequence[torch.Tensor],
    gs: Sequence[torch.Tensor],
    gss: Sequence[torch.Tensor],
    coefs: tuple[tuple[Any, Any], tuple[Any, Any], tuple[Any, Any]],
    scratch: Sequence[torch.Tensor],
    runs: int | None = None,
) -> list[torch.Tensor]:
    """In place, with ``coefs = ((b1, a1), (b2, a2), (b3, a3))``: ``m <- m b1 + a1 g`` (skipped when
    ``ms`` is None), ``v <- v b2 + a2 g g`` (``addcmul_``), ``s <- s b3 + a3 gs``, as the packages'
    ``mul_(b).add_(g, alpha=a)`` (the same kernels, so the same bits); returns ``s.abs().sum()`` per
    tensor, ``abs`` written into ``scratch`` (``scratch_like(ss)``).

    Small tensors are updated together with ``_foreach_*`` ops; a large contiguous tensor (all its
    arrays the same size) chunk by chunk, all six ops on one chunk while it is in cache, which saves
    memory traffic. Elementwise ops give the same bits in any order; each sum is still one
    ``.sum()`` over the whole tensor.

    Batched runs (``runs``, docs/optimizers/README.md §6): ``a1``, ``a2`` and ``a3`` may be R values
    (``add_scaled``), the sums are per member, and no tensor is chunked (a chunk would cut members).
    """
    (b1, a1), (b2, a2), (b3, a3) = coefs

    def update(m: list[torch.Tensor], v: list[torch.Tensor], s: list[torch.Tensor], g, gsl) -> None:
        if ms is not None:
            torch._foreach_mul_(m, b1)
            add_scaled(m, g, a1)
        torch._foreach_mul_(v, b2)
        if isinstance(a2, np.ndarray):  # Prodigy's d^2 (1 - beta2), per member
            add_scaled(v, torch._foreach_mul(g, g), a2)
        else:
            torch._foreach_addcmul_(v, g, g, value=a2)
        torch._foreach_mul_(s, b3)
        add_scaled(s, gsl, a3)

    lists = [vs, ss, gs, gss, scratch] + ([ms] if ms is not None else [])
    big = [
        i
        for i in range(len(vs))
        if runs is None
        and vs[i].numel() >= 2 * CHUNK
        and all(t[i].is_contiguous() and t[i].numel() == vs[i].numel() for t in lists)
    ]
    small = [i for i in range(len(vs)) if i not in set(big)]
    out: list[torch.Tensor | None] = [None] * len(vs)
    if small:
        pick = [[t[i] for i in small] for t in lists]
        update(pick[5] if ms is not None else [], *pick[:4])
        for i, s, t in zip(small, pick[1], pick[4], strict=True):
            out[i] = total(torch.abs(s, out=t), runs)
    for i in big:
        flats = [t[i].view(-1) for t in lists]
        for a in range(0, flats[0].numel(), CHUNK):
            v, s, g, gsl, t, *m = (f[a : a + CHUNK] for f in flats)
            update(m, [v], [s], [g], [gsl])
            torch.abs(s, out=t)
        out[i] = scratch[i].sum()
    return [t for t in out if t is not None]


class AdamForm(torch.optim.Optimizer):
    """The step shared by D-Adapt Adam (docs/optimizers/dadaptation.md §2.2) and Prodigy
    (docs/optimizers/prodigy.md §2). The eager path is the packages' skeleton, with the per-group pieces from
    the subclass, each keeping the package's operations and their order:

    1. ``_begin()``: the gradients, the non-finite policy (None: the step is skipped), group 0's scalars
       ``sc`` and the lazy state;
    2. per group, the coupled decay into ``p.grad`` and (``lr > 0``) ``_dots``, the per-tensor dots of the
       d estimate (old state); the non-finite check on them when ``_begin`` left it to them;
    3. per group at ``lr > 0``, ``_moments`` (each tensor's new ``||s||_1``) and ``_weight`` (of the
       group's dot and l1 terms);
    4. ``_host_update``: the new d and the scalars to store (None: the package's early return, no move);
    5. per group with gradients, the decoupled decay ``x <- x - wd dlr x`` and ``_move``; then
       ``finish_step``.

    When ``_use_fused()`` (default: the ``fused`` flag) ``_fused_step(pgs, grads, check_later, sc)`` runs
    instead of 2-5: its pass 1 returns each tensor's dot and new ``||s||_1`` without writing, and
    ``_fused_update`` does steps 2-4 on the host from them.

    Batched runs (``runs``, docs/optimizers/README.md §6) take these same eager steps: host values are
    ``[T, R]`` rows and the scalars R values (``optimizers._runs``), ``members_step`` applies the
    non-finite policy per member, and ``_host_update`` may add ``"moved"``, the mask of the members that
    move (the others took the package's early return: their parameters are put back).
    """

    fused: bool
    runs: int | None = None  # a batched group's R (docs/optimizers/README.md §6); None: a run alone

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure_loss(closure)
        start = self._begin()
        if start is not None:
            with members_step(self, start[1]):
                (self._fused_step if self._use_fused() else self._eager_step)(*start)
        return loss

    def _use_fused(self) -> bool:
        return self.fused

    def _eager_step(self, pgs: GroupGrads, grads: list[torch.Tensor], check_later: bool, sc: Any) -> None:
        """Steps 2-5 of the class docstring."""
        groups = self.param_groups
        dots: list[torch.Tensor] = []
        for group, (ps, gs) in zip(groups, pgs, strict=True):
            add_coupled_decay(group, ps, gs, sc.decouple)
            if group["lr"] > 0.0 and ps:
                dots += self._dots(group, ps, gs)
        # the dots go to the host now only when the non-finite check rides on them; else with the l1s
        dot_values = host_values(dots, self.runs) if check_later else None
        if check_later and skip_if_reduction_nonfinite(dot_values, grads, *groups):
            return

        l1s: list[torch.Tensor] = []
        weights: list[float] = []  # of each tensor's dot and l1 terms
        for group, (ps, gs) in zip(groups, pgs, strict=True):
            if group["lr"] > 0.0 and ps:
                l1s += self._moments(group, ps, gs, sc)
                weights += [self._weight(group, sc)] * len(ps)
        dot_values, l1_values = host_values_after(dots, dot_values, l1s, self.runs)
        update = self._host_update(sc, pgs, weights, dot_values, l1_values)
        if update is None:
            return
        moved = every_member(update.pop("moved", True))
        for group, (ps, gs) in zip(groups, pgs, strict=True):
            if ps:
                with only_members(moved, ps):
                    if group["weight_decay"] != 0 and sc.decouple:
                        add_scaled(ps, ps, -group["weight_decay"] * sc.dlr)
                    self._move(group, ps, gs, sc, update)
        finish_step(self, pgs, sc.k, update, moved)

    def _fused_update(
        self,
        pgs: GroupGrads,
        grads: list[torch.Tensor],
        check_later: bool,
        sc: Any,
        work: list[tuple[dict[str, Any], list[list[torch.Tensor]], bool]],
        sums: list[torch.Tensor],
    ) -> dict[str, float] | None:
        """A fused step after pass 1, with ``work`` its ``(group, [g, x, ...], coupled)`` at ``lr > 0`` and
        ``sums`` each tensor's dot and new ``||s||_1`` (interleaved): one host sync, the non-finite check on
        the dots when ``_begin`` left it to them, ``_host_update``. None: no move (a skipped step; or the
        package's early return, where the coupled decay and the eager ``_moments`` leave every tensor as
        the eager step does)."""
        values = host_floats(sums)
        dot_values, l1_values = values[0::2], values[1::2]
        if check_later and skip_if_reduction_nonfinite(dot_values, grads, *self.param_groups):
            return None
        weights = [self._weight(group, sc) for group, lists, _ in work for _ in lists[0]]
        update = self._host_update(sc, pgs, weights, dot_values, l1_values)
        if update is None:
            for group, (gs, ps, *_), _ in work:
                add_coupled_decay(group, ps, gs, sc.decouple)
                self._moments(group, ps, gs, sc)
        return update

    # the subclass's pieces (class docstring)
    def _begin(self) -> tuple[GroupGrads, list[torch.Tensor], bool, Any] | None:
        raise NotImplementedError

    def _dots(self, group: Group, ps: Tensors, gs: Tensors) -> Tensors:
        raise NotImplementedError

    def _moments(self, group: Group, ps: Tensors, gs: Tensors, sc: Any) -> Tensors:
        raise NotImplementedError

    def _weight(self, group: Group, sc: Any) -> float:
        raise NotImplementedError

    def _host_update(
        self,
        sc: Any,
        pgs: GroupGrads,
        weights: Sequence[float],
        dot_values: Sequence[float],
        l1_values: Sequence[float],
    ) -> dict[str, float] | None:
        raise NotImplementedError

    def _move(self, group: Group, ps: Tensors, gs: Tensors, sc: Any, update: dict[str, float]) -> None:
        raise NotImplementedError

    def _fused_step(self, pgs: GroupGrads, grads: list[torch.Tensor], check_later: bool, sc: Any) -> None:
        raise NotImplementedError
