"""Batched runs: the runs of a multirun that differ only in seed and in batchable optimizer values, as
one program whose tensors carry a leading run dimension (docs/optimizers/README.md §6).

Two halves. :func:`pack` (called by the sweeper, ``hydra_plugins/lrbench_batched``) turns a multirun's
job list into groups: jobs whose overrides agree on everything but ``seed`` and ``optimizer.<key>`` for
keys in the optimizer's ``batch_keys``, of a task with ``batchable = True``, become one job with
``members={keys: [...], values: [[...], ...]}``; the rest stay one job per run, with a one-line reason.
:class:`BatchedTrainer` trains such a group: each member's model built as its run alone builds it, each
member's own minibatches, per-member losses, metrics, divergence and summaries. Every member is still a
run of the store with its own run dir and run id (the one its run alone has), so tables, resume-by-
skipping and W&B see no difference; the group's checkpoint lives in ``<group>/_batched/<id>/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import optimizers
import tasks
from optimizers._runs import split_diagnostics
from runners.build import build_optimizer, seed_everything
from runners.errors import ConfigError
from runners.loggers import NoLogger, WandbLogger
from runners.loop import Trainer, is_better
from runners.store import MetricsWriter

OPTIMIZER_KEY = "optimizer."


def _split(override: str) -> tuple[str, str] | None:
    """``key=value`` of a plain override (None for ``+key=``, ``~key`` and the like)."""
    key, eq, value = override.partition("=")
    if not eq or key[:1] in "+~" or not key:
        return None
    return key, value


def _batchable_key(key: str) -> bool:
    return key == "seed" or (key.startswith(OPTIMIZER_KEY) and key.count(".") == 1)


def pack(
    jobs: Sequence[Sequence[str]], compose: Callable[[Sequence[str]], DictConfig]
) -> tuple[list[list[str]], list[str]]:
    """A multirun's jobs (override lists) as batched groups where they can be (module docstring); the
    jobs to launch and one line per set of runs that stays one run per process, saying why."""
    by_rest: dict[tuple[str, ...], list[dict[str, str]]] = defaultdict(list)
    order: list[tuple[str, ...]] = []
    for job in jobs:
        swept = {kv[0]: kv[1] for o in job if (kv := _split(o)) is not None and _batchable_key(kv[0])}
        rest = tuple(o for o in job if (kv := _split(o)) is None or not _batchable_key(kv[0]))
        key = (*rest, "|", *sorted(swept))
        if key not in by_rest:
            order.append(key)
        by_rest[key].append({"_rest": "\0".join(rest), **swept})
    out: list[list[str]] = []
    notes: list[str] = []
    for key in order:
        members = by_rest[key]
        rest = members[0]["_rest"].split("\0") if members[0]["_rest"] else []
        swept_keys = [k for k in members[0] if k != "_rest"]
        plain = [[*rest, *(f"{k}={m[k]}" for k in swept_keys)] for m in members]
        if len(members) == 1:
            out += plain
            continue
        cfg = compose(plain[0])
        if not cfg.get("batch_runs", True):  # asked for one process per run: nothing to say
            out += plain
            continue
        why = _why_not(cfg, members, swept_keys)
        if why:
            what = " ".join(rest) or "defaults"
            notes.append(f"batch_runs: {len(members)} runs ({what}) run one per process: {why}")
            out += plain
            continue
        varying = [k for k in swept_keys if len({m[k] for m in members}) > 1]
        fixed = [f"{k}={members[0][k]}" for k in swept_keys if k not in varying]
        keys = ",".join(f"'{k}'" for k in varying)
        values = ",".join("[" + ",".join(m[k] for k in varying) + "]" for m in members)
        out.append([*rest, *fixed, f"members={{keys:[{keys}],values:[{values}]}}"])
    return out, notes


def unpack(job: Sequence[str]) -> list[list[str]]:
    """The plain override list of each run of a job :func:`pack` wrote (a job that is not a group: itself).

    Reads back the values as :func:`pack` wrote them (numbers: seeds and batch-key values)."""
    packed = [o for o in job if o.startswith("members=")]
    if not packed:
        return [list(job)]
    rest = [o for o in job if not o.startswith("members=")]
    body = packed[0][len("members={keys:[") : -len("]]}")]
    keys_part, _, values_part = body.partition("],values:[[")
    keys = [k.strip("'") for k in keys_part.split(",")]
    members = [m.split(",") for m in values_part.split("],[")]
    return [[*rest, *(f"{k}={v}" for k, v in zip(keys, m, strict=True))] for m in members]


def _why_not(cfg: DictConfig, members: list[dict[str, str]], swept: list[str]) -> str | None:
    """None where these runs can be one batched program, else why not (one line)."""
    if cfg.get("launcher") is not None and OmegaConf.select(cfg, "launcher.nproc_per_node") is not None:
        return "launcher=torchrun runs one run on several processes"
    task = str(cfg.task.name)
    if not getattr(tasks.task_class(task), "batchable", False):
        return f"task {task} has no batched runs"
    name = str(cfg.optimizer.name)
    keys = optimizers.batch_keys(name) if name in optimizers.OPTIMIZERS else None
    if keys is None:
        return f"optimizer {name} has no run dimension yet"
    differ = [k for k in swept if k != "seed" and len({m[k] for m in members}) > 1]
    bad = [k for k in differ if k[len(OPTIMIZER_KEY) :] not in keys]
    if bad:
        return f"they differ in {', '.join(bad)}, and {name} batches only {['seed', *keys]}"
    return None


def member_configs(cfg: DictConfig) -> list[DictConfig]:
    """The run config of each member of the group ``cfg`` (its ``members`` applied, then cleared)."""
    spec = cfg.members
    keys, values = list(spec["keys"]), [list(v) for v in spec["values"]]
    if not keys or any(len(v) != len(keys) for v in values):
        raise ConfigError("members", f"needs keys and one value per key for each member, got {spec}")
    out = []
    for member in values:
        c = cfg.copy()
        with _writable(c):
            c.members = None
            for key, value in zip(keys, member, strict=True):
                OmegaConf.update(c, key, value, merge=False)
        out.append(c)
    return out


class _writable:
    def __init__(self, cfg: DictConfig) -> None:
        self.cfg, self.flag = cfg, OmegaConf.is_struct(cfg)

    def __enter__(self) -> None:
        OmegaConf.set_struct(self.cfg, False)

    def __exit__(self, *exc: object) -> None:
        OmegaConf.set_struct(self.cfg, self.flag)


def group_optimizer(containers: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The group's optimizer config: the members' shared values, and a list of R values for a batch key
    whose values differ. Anything else that differs between members is refused."""
    first = containers[0]
    name = first["optimizer"]["name"]
    keys = optimizers.batch_keys(name)
    if keys is None:
        raise ConfigError("members", f"optimizer {name} has no run dimension; its runs cannot be batched")
    opt = dict(first["optimizer"])
    for key in first["optimizer"]:
        values = [c["optimizer"].get(key) for c in containers]
        if any(v != values[0] for v in values):
            if key not in keys:
                why = f"members differ in optimizer.{key}; {name} batches only {list(keys)}"
                raise ConfigError("members", why)
            opt[key] = values
    strip = {"seed", "optimizer", "members"}
    base = {k: v for k, v in first.items() if k not in strip}
    for c in containers[1:]:
        other = {k: v for k, v in c.items() if k not in strip}
        diff = sorted(k for k in base.keys() | other.keys() if base.get(k) != other.get(k))
        if diff:
            raise ConfigError("members", f"members differ in {', '.join(diff)}, which cannot be batched")
    return opt


def group_dir(run_dirs: Sequence[Path]) -> Path:
    """Where a group keeps its checkpoint: a function of its members' run ids."""
    digest = hashlib.sha256("\n".join(sorted(d.name for d in run_dirs)).encode()).hexdigest()[:12]
    return run_dirs[0].parent / "_batched" / digest


class _Metrics:
    """One ``metrics.jsonl`` per member; ``count`` is the list of their record counts."""

    def __init__(self, run_dirs: Sequence[Path], records: Sequence[int] | int) -> None:
        keep = records if isinstance(records, list) else [0] * len(run_dirs)
        paths = [d / "metrics.jsonl" for d in run_dirs]
        self.writers = [MetricsWriter(p, keep=k) for p, k in zip(paths, keep, strict=True)]

    @property
    def count(self) -> list[int]:
        return [w.count for w in self.writers]

    def sync(self) -> None:
        for w in self.writers:
            w.sync()

    def close(self) -> None:
        for w in self.writers:
            w.close()


class BatchedTrainer(Trainer):
    """The training loop of :class:`runners.loop.Trainer` for R members at once (one process)."""

    def __init__(
        self,
        members: Sequence[dict[str, Any]],
        run_dirs: Sequence[Path],
        optimizer_cfg: dict[str, Any],
        *,
        progress: bool,
    ) -> None:
        self.members, self.run_dirs = list(members), list(run_dirs)
        self.seeds = [int(c["seed"]) for c in members]
        self.runs = len(members)
        self.optimizer_cfg = optimizer_cfg
        self.member_status: list[dict[str, Any] | None] = [None] * self.runs  # divergence, per member
        self.loggers: list[NoLogger | WandbLogger] = [NoLogger() for _ in members]
        super().__init__(members[0], group_dir(run_dirs), NoLogger(), progress=progress)
        if not self.resumed_from:
            self.loss_acc = torch.zeros(self.runs, device=self.device)
            self.last, self.best = [{} for _ in members], [{} for _ in members]

    # -- the hooks of Trainer ---------------------------------------------------------------
    def _build_model(self) -> torch.nn.Module:
        models = []
        for seed in self.seeds:  # each member initialised as its run alone (runners.loop.Trainer)
            seed_everything(seed)
            models.append(self.task.build_model())
        seed_everything(self.seeds[0])
        return self.task.stack_models(models)

    def _build_optimizer(self, sharded: bool) -> torch.optim.Optimizer:
        cfg = {**self.cfg, "optimizer": self.optimizer_cfg}
        return build_optimizer(cfg, self.model, self.spe, runs=self.runs)

    def _open_metrics(self, records: Any) -> _Metrics:
        return _Metrics(self.run_dirs, records)

    def _batches(self, epoch: int) -> Any:
        return self.task.member_batches(self.seeds, epoch)

    def _train_loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        with self.amp:
            losses = self.task.member_losses(self.train_model, batch)
        return losses.sum(), losses  # members share no parameters: each gradient is its own loss's

    def _extra_state(self) -> dict[str, Any]:
        return {"member_status": self.member_status}

    def _load_extra_state(self, ck: dict[str, Any]) -> None:
        self.member_status = ck["member_status"]

    def _active(self) -> list[int]:
        return [r for r in range(self.runs) if self.member_status[r] is None]

    def _record_member(self, r: int, values: dict[str, float]) -> None:
        self.metrics.writers[r].write_dict(self.step, self.step / self.spe, values)
        self.loggers[r].log(values, self.step)
        self.last[r].update(values)

    def _log_point(self) -> bool:
        """Each member's mean loss since the last log point and its diagnostics; a member whose loss is not
        finite is marked diverged (recorded no further); False once every member has diverged."""
        if self.n_acc == 0:
            return bool(self._active())
        losses = [v / self.n_acc for v in self.loss_acc.tolist()]
        diags = split_diagnostics(self.diagnostics(), self.runs) if self.diagnostics else [{}] * self.runs
        window = [self.step - self.n_acc + 1, self.step]
        for r in self._active():
            self._record_member(r, {"batch/loss": losses[r], **{f"opt/{k}": v for k, v in diags[r].items()}})
            if not math.isfinite(losses[r]):
                self.member_status[r] = {"diverged_step": self.step, "nonfinite_window": window}
        self.loss_acc.zero_()
        self.n_acc = 0
        if self.bar is not None:
            self.bar.update(self.step - self.bar.n)
        return bool(self._active())

    def evaluate(self) -> None:
        """Each member's metrics, on the optimizer's averaged weights where it keeps them (as alone)."""
        self.model.eval()
        eval_weights = getattr(self.opt, "evaluation_weights", contextlib.nullcontext)
        with eval_weights(), self.amp:
            per_member = self.task.evaluate_members(self.model)
        self.model.train()
        for r in self._active():
            values = {k: float(v) for k, v in per_member[r].items()}
            self._record_member(r, values)
            best = self.best[r]
            for key, value in values.items():
                if math.isfinite(value) and (key not in best or is_better(key, value, best[key])):
                    best[key] = value
        self.last_eval_step = self.step

    def member_results(self, result: dict[str, Any]) -> list[dict[str, Any]]:
        """Each member's summary fields from the group's ``run()`` result."""
        out = []
        ids = [d.name for d in self.run_dirs]
        for r in range(self.runs):
            res = {**result, "final": result["final"][r], "best": result["best"][r]}
            res["batched"] = {"group": self.run_dir.name, "members": ids, "index": r}
            status = self.member_status[r]
            if status is not None:
                res.update(status, status="diverged", steps=status["diverged_step"])
                res["epochs_done"] = status["diverged_step"] / self.spe
            elif result["status"] == "diverged":  # every member diverged: this one at the last log point
                res["status"] = "diverged"
            out.append(res)
        return out
