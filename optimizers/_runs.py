"""The run dimension: R independent runs stepped by one optimizer (docs/optimizers/README.md §6).

A batched group of R runs (one per seed, or per learning rate) keeps every parameter as one tensor with
a leading dimension of R: member ``r``'s parameters are ``p[r]`` for every ``p``. An optimizer built
with ``runs=R`` treats the members as independent problems: every global sum is reduced within a member
(a length-R vector), every learned scalar is a length-R vector, a member whose gradients are not finite
skips its step alone, and a hyper-parameter may differ per member. ``runs=None`` is the single run, whose
parameters have no run dimension. These helpers are the only place the layout is spelled out.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from optimizers._common import foreach_dot, host_floats

Floats = float | Sequence[float] | np.ndarray | torch.Tensor


def check_runs(runs: int | None, params: Iterable[torch.Tensor]) -> None:
    """Raise ValueError unless ``runs`` is None or a positive int that every parameter's dim 0 equals."""
    if runs is None:
        return
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be None or an int >= 1, got {runs!r}")
    for p in params:
        if p.dim() == 0 or p.shape[0] != runs:
            raise ValueError(
                f"runs={runs}: every parameter needs a leading run dimension of {runs}, got {tuple(p.shape)}"
            )


#: torch's CPU allocations start on this boundary (c10's gAlignment): a run alone's tensors do
CPU_ALIGNMENT = 64


def aligned_members(runs: int, shape: Sequence[int], like: torch.Tensor) -> torch.Tensor:
    """An empty ``[runs, *shape]`` tensor (``like``'s dtype and device) whose member slices each start on a
    64-byte boundary, as a run alone's fresh tensor does: packed where that aligns them, else rows of a
    padded buffer. BLAS kernels (MKL's sgemm, ``dot``) round by the alignment of their operands, so in a
    packed tensor a member's bits could depend on its index."""
    size = math.prod(shape)
    per_line = CPU_ALIGNMENT // like.element_size()
    if size % per_line == 0:
        return like.new_empty(runs, *shape)
    return like.new_empty(runs, -(-size // per_line) * per_line)[:, :size].view(runs, *shape)


def member_values(name: str, value: Floats, runs: int | None) -> np.ndarray | float:
    """A hyper-parameter that may differ per member: a float (shared), or R floats as a float64 array.

    A single run takes a float only."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if runs is None:
        raise ValueError(f"{name} must be a number for a single run, got {value!r}")
    arr = np.asarray(value.tolist() if isinstance(value, torch.Tensor) else value, dtype=np.float64)
    if arr.shape != (runs,):
        raise ValueError(f"{name} must be a number or {runs} numbers (one per run), got shape {arr.shape}")
    return arr


def host_map(fn: Callable[..., float], *args: float | np.ndarray) -> np.ndarray:
    """``fn`` applied per member to Python floats: the scalars a run alone computes, bit for bit.

    For anything beyond + - * / and sqrt: numpy's float64 ``power``, ``exp`` and ``log`` may take SIMD
    paths (SVML) that differ from the C library's by an ulp, so ``beta ** k`` per member goes through
    here, not through ``np.power``."""
    shape = np.broadcast_shapes(*(np.shape(a) for a in args))
    columns = [np.broadcast_to(np.asarray(a, dtype=np.float64), shape).tolist() for a in args]
    return np.array([fn(*xs) for xs in zip(*columns, strict=True)], dtype=np.float64)


def per_member(values: Floats, like: torch.Tensor) -> torch.Tensor | float:
    """Per-member scalars as a tensor that broadcasts over ``like``'s member slices (shape
    ``[R, 1, ..., 1]``, ``like``'s dtype and device); a Python float stays a float (a shared scalar).

    Cast to the parameter's dtype first, as a Python float is when it scales a tensor, so that a member
    computes what its single run computes."""
    if isinstance(values, int | float):
        return float(values)
    shape = (-1,) + (1,) * (like.dim() - 1)
    host = _NUMPY_DTYPES.get(like.dtype)
    if host is not None and not isinstance(values, torch.Tensor):  # numpy's cast rounds as torch's does
        with np.errstate(over="ignore"):  # beyond float32's range: inf, silently, as torch's cast
            t = torch.from_numpy(np.asarray(values, dtype=np.float64).astype(host).reshape(shape))
        return t if like.device.type == "cpu" else t.to(like.device)
    t = values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values, dtype=np.float64))
    return t.to(dtype=like.dtype, device=like.device).reshape(shape)


def member_tensors(values: Floats, like: Sequence[torch.Tensor]) -> list[torch.Tensor | float]:
    """:func:`per_member` for every tensor of ``like``, the same numbers, made once per dtype and device
    and viewed for each tensor's rank: a small step pays for every cast and copy it makes. Values seen
    lately (a grid's rates under a constant schedule) reuse their tensors: read-only operands, never
    written."""
    if isinstance(values, int | float):
        return [float(values)] * len(like)
    key = None
    if isinstance(values, np.ndarray):
        key = (values.dtype.str, values.tobytes(), tuple((x.dtype, x.device, x.dim()) for x in like))
        if key in _RECENT:
            return list(_RECENT[key])
    flat: dict[tuple[torch.dtype, torch.device], np.ndarray | torch.Tensor] = {}
    shaped: dict[tuple[torch.dtype, torch.device, int], torch.Tensor] = {}
    for x in like:
        layout = (x.dtype, x.device)
        if layout not in flat:
            host = _NUMPY_DTYPES.get(x.dtype) if x.device.type == "cpu" else None
            if host is not None and not isinstance(values, torch.Tensor):  # per_member's host cast
                with np.errstate(over="ignore"):
                    flat[layout] = np.asarray(values, dtype=np.float64).astype(host)
            else:
                flat[layout] = per_member(values, x).reshape(-1)  # type: ignore[union-attr]
        if (*layout, x.dim()) not in shaped:
            shape, made = (-1,) + (1,) * (x.dim() - 1), flat[layout]
            view = torch.from_numpy(made.reshape(shape)) if isinstance(made, np.ndarray) else made.view(shape)
            shaped[(*layout, x.dim())] = view
    out: list[torch.Tensor | float] = [shaped[x.dtype, x.device, x.dim()] for x in like]
    if key is not None:
        if len(_RECENT) >= _RECENT_SIZE:
            _RECENT.clear()
        _RECENT[key] = out
    return list(out)


#: member_tensors' recent results by (values, layouts): a fresh host tensor per step costs a small step more
#: than its making (benchmarks/README.md, Table 1 speed)
_RECENT: dict[tuple[Any, ...], list[torch.Tensor | float]] = {}
_RECENT_SIZE = 64


#: parameter dtypes whose per-member scalars are cast on the host (a step's small tensors: fewer calls);
#: both casts are C's double -> float, as torch's (half is left to torch, which may round via float)
_NUMPY_DTYPES = {torch.float64: np.float64, torch.float32: np.float32}


def member_sums(tensors: Sequence[torch.Tensor], runs: int) -> torch.Tensor:
    """``[T, R]``: each tensor's sum within each member (no host sync)."""
    if not tensors:
        return torch.zeros(0, runs)
    return torch.stack([t.reshape(runs, -1).sum(1) for t in tensors])


def member_dots(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], runs: int) -> torch.Tensor:
    """``[T, R]``: each pair's inner product within each member (no host sync)."""
    if not a:
        return torch.zeros(0, runs)
    rows = [torch.linalg.vecdot(x.reshape(runs, -1), y.reshape(runs, -1)) for x, y in zip(a, b, strict=True)]
    return torch.stack(rows)


def host_rows(values: torch.Tensor) -> np.ndarray:
    """``[T, R]`` per-tensor, per-member values as float64 on the host (one sync). float32 widens in
    numpy (exactly); the casts and the move run only where needed: each is an op a small step pays."""
    v = values.detach()
    if v.dtype not in (torch.float32, torch.float64):
        v = v.to(torch.float64)
    if v.device.type != "cpu":
        v = v.cpu()
    return v.numpy().astype(np.float64, copy=False)


def sequential_sum(rows: np.ndarray, start: float | np.ndarray = 0.0) -> np.ndarray:
    """Sum ``[T, R]`` over T in tensor order, in float64: per member the order of a single run's
    ``for v in values: acc += v`` (numpy's own sum is pairwise)."""
    acc = np.zeros(rows.shape[1]) + start
    for row in rows:
        acc = acc + row
    return acc


def split_diagnostics(values: Mapping[str, Any], runs: int) -> list[dict[str, float]]:
    """A batched ``diagnostics()`` (each value a float shared by all members, or R values) as one dict
    of floats per member."""
    out: list[dict[str, float]] = [{} for _ in range(runs)]
    for key, value in values.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().tolist()
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        if isinstance(value, list | tuple):
            if len(value) != runs:
                raise ValueError(f"diagnostics()[{key!r}] has {len(value)} values for {runs} runs")
            for r, v in enumerate(value):
                out[r][key] = float(v)
        else:
            for r in range(runs):
                out[r][key] = float(value)
    return out


# One rule for a run alone and a batched group (docs/optimizers/README.md §6): the helpers below take
# ``runs`` (None alone) and return what a single run computes (0-dim tensors, Python floats, bools) or
# its per-member form (length-R tensors, float64 arrays, bool masks), so an optimizer writes its update
# once. Alone they run the very operations a single run always ran (``torch.dot``, ``alpha=``), so its
# bits do not change.


def dots(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], runs: int | None) -> list[torch.Tensor]:
    """Per pair ``<a_i, b_i>``: alone a 0-dim ``torch.dot``, batched the R per-member products (no sync)."""
    if runs is None:
        return foreach_dot(a, b)
    return [torch.linalg.vecdot(x.reshape(runs, -1), y.reshape(runs, -1)) for x, y in zip(a, b, strict=True)]


def total(t: torch.Tensor, runs: int | None) -> torch.Tensor:
    """``t.sum()`` alone, each member's sum (length R) batched (no sync)."""
    return t.sum() if runs is None else t.reshape(runs, -1).sum(1)


def host_values(values: Sequence[torch.Tensor], runs: int | None) -> list[float] | np.ndarray:
    """One host sync: alone the 0-dim tensors as Python floats; batched the length-R tensors as ``[T, R]``
    float64 rows (iterating them in tensor order is a single run's ``for v in values``)."""
    if runs is None:
        return host_floats(values)
    if not values:
        return np.zeros((0, runs))
    return host_rows(torch.stack(list(values)))


def add_scaled_(ys: Sequence[torch.Tensor], xs: Sequence[torch.Tensor], alpha: float | np.ndarray) -> None:
    """In place ``y <- y + alpha x``, rounded as torch's ``alpha=`` (one fused multiply-add, so ``y + x
    alpha_r`` would not do): a shared float is that call; R values are one ``addcmul`` with the members'
    column where this build's ``addcmul`` rounds alike (:func:`addcmul_fuses`), else the ``alpha=`` call
    member by member. Either way a member's bits are its run alone's."""
    ys, xs = list(ys), list(xs)
    if isinstance(alpha, int | float):
        torch._foreach_add_(ys, xs, alpha=alpha)
        return
    if ys and addcmul_fuses(ys[0].device.type):
        torch._foreach_addcmul_(ys, xs, member_tensors(alpha, xs))
        return
    for r, a in enumerate(alpha):
        torch._foreach_add_([y[r] for y in ys], [x[r] for x in xs], alpha=float(a))


@functools.cache
def addcmul_fuses(device_type: str = "cpu") -> bool:
    """Whether ``addcmul(x, y, s)`` (``x + (1 y) s``) equals ``x.add(y, alpha=s)`` bit for bit on this device
    type, i.e. rounds once as well (the compiler fuses the kernel's multiply-add): checked once per
    process, in float32 and float64, on random rows long enough for the vector loop and its tail, whose
    fused and unfused results differ."""
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        x, y = (torch.randn(3, 37, generator=g, dtype=dtype).to(device_type) for _ in range(2))
        s = torch.rand(3, 1, generator=g, dtype=dtype).to(device_type)
        fused = torch.stack([x[r].add(y[r], alpha=s[r].item()) for r in range(3)])
        if not torch.equal(torch.addcmul(x, y, s), fused):
            return False
    return True


def select(cond: bool | np.ndarray, a: Any, b: Any) -> Any:
    """``a if cond else b``, member by member for a mask (``np.where``)."""
    if isinstance(cond, bool | np.bool_):
        return a if cond else b
    return np.where(cond, a, b)


def larger(a: Any, b: Any) -> Any:
    """Python's ``max(a, b)`` (``a`` unless ``b > a``), member by member for arrays."""
    return select(b > a, b, a)


def smaller(a: Any, b: Any) -> Any:
    """Python's ``min(a, b)`` (``a`` unless ``b < a``), member by member for arrays."""
    return select(b < a, b, a)


def member_scalars(runs: int | None, **values: Any) -> dict[str, Any]:
    """Initial group scalars: alone as given; batched R values each (R given values kept, a number
    repeated; ints stay ints), so that a member starts from the numbers of its run alone."""
    if runs is None:
        return values
    out = {}
    for name, value in values.items():
        if isinstance(value, int) and not isinstance(value, bool):
            out[name] = np.full(runs, value, dtype=np.int64)
        else:
            out[name] = np.zeros(runs) + member_values(name, value, runs)
    return out


def scalar_text(value: Any, spec: str = "") -> str:
    """``format(value, spec)`` for a log line; a batched run's R values as a bracketed list."""
    if isinstance(value, np.ndarray):
        return "[" + ", ".join(format(float(v), spec) for v in value) + "]"
    return format(value, spec)


def foreach_addcdiv_(
    xs: Sequence[torch.Tensor], a: Sequence[torch.Tensor], b: Sequence[torch.Tensor], scales: Sequence[Any]
) -> None:
    """``x <- x + s a / b`` per tensor: ``torch._foreach_addcdiv_`` with Python floats; with per-member
    scales (:func:`member_tensors`) ``s a`` first, then the kernel's ``x + (1.0 (s a)) / b``: the arithmetic
    of the float call, bit for bit (``1.0 (s a)`` is ``s a``)."""
    if all(isinstance(s, float) for s in scales):
        torch._foreach_addcdiv_(list(xs), list(a), list(b), list(scales))
        return
    torch._foreach_addcdiv_(list(xs), torch._foreach_mul(list(a), list(scales)), list(b), value=1.0)


def foreach_scaled(
    op: Callable[..., Any], lists: Sequence[list[torch.Tensor]], scalar: Any, key: str = ""
) -> Any:
    """``op(*lists, scalar)`` (or ``op(*lists, key=scalar)``): a ``torch._foreach_*`` call with one scalar
    for every tensor. Per-member values (an ``[R]`` array, batched runs) make it the same call once per
    member on the members' slices ``t[r]``, so each member computes bit for bit what its run alone does (a
    single call with a per-member tensor would round differently where the kernel fuses a multiply-add);
    an out-of-place op's results are stacked back into one tensor per input."""

    def call(ls: Sequence[list[torch.Tensor]], s: Any) -> Any:
        return op(*ls, **{key: s}) if key else op(*ls, s)

    if not isinstance(scalar, np.ndarray):
        return call(lists, scalar)
    outs = [call([[t[r] for t in ts] for ts in lists], float(s)) for r, s in enumerate(scalar)]
    if outs[0] is None:
        return None
    return [torch.stack([o[i] for o in outs]) for i in range(len(outs[0]))]
