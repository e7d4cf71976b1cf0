"""The training loop: task + optimizer + schedule, with evaluation, logging, checkpoints and resume.

The runner knows the task only through :class:`tasks.base.Task` and the optimizer only through
``optimizers.build`` and the optional ``diagnostics()``. The per-step path does no host sync: the
minibatch loss is summed on the device and read (and checked for NaN/inf) every
``log_every_steps`` steps only.

On several ranks (:mod:`runners.distributed`) every rank runs this loop on its share of each global
batch and evaluates the full model itself (same weights, same metrics); rank 0 alone writes. The ranks
agree at each log point, by one all-reduce of a few scalars, on the mean loss, on a stop signal any of
them received and on a checkpoint due by time: a signal is acted on within ``log_every_steps`` steps.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import signal
import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from runners import checkpoint, distributed
from runners.build import build_optimizer, build_scheduler, build_task, pick_device, seed_everything
from runners.loggers import NoLogger, WandbLogger
from runners.store import MetricsWriter, provenance

LOWER_IS_BETTER = ("loss", "error", "perplexity", "ppl", "nll")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def is_better(key: str, new: float, old: float) -> bool:
    lower = any(word in key.rsplit("/", 1)[-1].lower() for word in LOWER_IS_BETTER)
    return (new < old) if lower else (new > old)


def grad_clearer(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> Callable[[], None]:
    """What the loop calls before each backward: ``p.grad = None`` for every parameter, as torch's
    ``zero_grad(set_to_none=True)`` does, without the profiler scope that opens per call (a measurable share
    of a tiny step); an optimizer that overrides ``zero_grad`` keeps its own."""
    if type(opt).zero_grad is not torch.optim.Optimizer.zero_grad:
        return lambda: opt.zero_grad(set_to_none=True)

    def clear() -> None:
        for p in params:
            p.grad = None

    return clear


class Trainer:
    """One run in one run dir; :meth:`run` returns the summary fields the loop knows."""

    def __init__(
        self,
        cfg: dict[str, Any],
        run_dir: Path,
        logger: NoLogger | WandbLogger,
        *,
        progress: bool,
        world: distributed.World | None = None,
    ) -> None:
        self.cfg, self.run_dir, self.logger, self.progress = cfg, run_dir, logger, progress
        self.world = world or distributed.World(pick_device(cfg["device"]))
        self.device = self.world.device
        if cfg.get("torch_threads"):
            torch.set_num_threads(int(cfg["torch_threads"]))
        precision = cfg["precision"]
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        self.amp = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if precision == "bf16"
            else contextlib.nullcontext()
        )
        self.task = build_task(cfg, self.world)
        self.spe = int(self.task.steps_per_epoch)
        self.epochs = int(cfg["epochs"] or self.task.epochs)
        self.total = self.epochs * self.spe
        if cfg.get("max_steps"):
            self.total = min(self.total, int(cfg["max_steps"]))
        self.model = self._build_model()
        distributed.shard_model(self.model, self.world)
        sharded = self.world.distributed and self.world.strategy == "fsdp"
        self.opt = self._build_optimizer(sharded)
        self.train_model = distributed.training_module(self.model, self.world)
        self.sched, self.schedule_note = build_scheduler(cfg, self.opt, self.spe, self.total)
        self.diagnostics = getattr(self.opt, "diagnostics", None)
        # loop state (all of it goes into the checkpoint)
        self.step = self.epoch = self.in_epoch = self.n_acc = 0
        self.loss_acc = torch.zeros((), device=self.device)
        self.last: dict[str, float] = {}
        self.best: dict[str, float] = {}
        self.last_eval_step = -1
        self.prior_wall = self.prior_train_s = 0.0
        self.resumed_from: list[int] = []
        self.signal: int | None = None
        records = self._resume()
        self.metrics = self._open_metrics(records)

    # -- what a batched group (runners/batched.py) does differently ---------------------------
    def _build_model(self) -> torch.nn.Module:
        seed_everything(int(self.cfg["seed"]))
        return self.task.build_model()

    def _build_optimizer(self, sharded: bool) -> torch.optim.Optimizer:
        return build_optimizer(self.cfg, self.model, self.spe, sharded=sharded)

    def _open_metrics(self, records: Any) -> Any:
        path = self.run_dir / "metrics.jsonl" if self.world.is_main else None
        return MetricsWriter(path, keep=records)

    def _batches(self, epoch: int) -> Any:
        return self.task.train_batches(epoch)

    def _extra_state(self) -> dict[str, Any]:
        """What else the checkpoint holds."""
        return {}

    def _load_extra_state(self, ck: dict[str, Any]) -> None:
        """Read back :meth:`_extra_state`."""

    def _train_loss(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """(what to differentiate, what to accumulate for the logged loss)."""
        with self.amp:
            loss = self.task.loss(self.train_model, batch)
        return loss, loss

    # -- checkpoints -------------------------------------------------------------------------
    def _resume(self) -> Any:
        ck = checkpoint.load(self.run_dir)
        if ck is None:
            return 0
        distributed.load_states(self.model, self.opt, ck["model"], ck["optimizer"], self.world)
        if self.sched is not None:
            self.sched.load_state_dict(ck["scheduler"])
        own = ck["rng"], ck["loss_acc"]
        ranks = ck.get("ranks")  # what differs between ranks, when saved by as many ranks as now
        if ranks is not None and len(ranks) == self.world.world_size:
            own = ranks[self.world.rank]["rng"], ranks[self.world.rank]["loss_acc"]
        checkpoint.set_rng_state(own[0])
        for key in ("step", "epoch", "in_epoch", "n_acc", "last", "best", "last_eval_step", "resumed_from"):
            setattr(self, key, ck[key])
        self.loss_acc = own[1].to(self.device)
        self._load_extra_state(ck)
        self.prior_wall, self.prior_train_s = ck["wall_s"], ck["train_s"]
        self.resumed_from = [*self.resumed_from, self.step]
        return ck["records"]  # an int; a list, one per member, for a batched group

    def save_checkpoint(self) -> None:
        """Every rank takes part (FSDP gathers the shards; each rank gives its RNG state and its share of
        the loss sum since the last log point); rank 0 writes."""
        model_state, opt_state = distributed.states(self.model, self.opt, self.world)
        ranks = None
        if self.world.distributed:
            ranks = self.world.gather_objects(
                {"rng": checkpoint.rng_state(), "loss_acc": self.loss_acc.cpu()}
            )
        self.next_ckpt_time = self._next_ckpt_time()
        if not self.world.is_main:
            return
        self.metrics.sync()
        checkpoint.save(
            self.run_dir,
            {
                "model": model_state,
                "optimizer": opt_state,
                "scheduler": None if self.sched is None else self.sched.state_dict(),
                "step": self.step,
                "epoch": self.epoch,
                "in_epoch": self.in_epoch,
                "n_acc": self.n_acc,
                "loss_acc": self.loss_acc,
                "last": self.last,
                "best": self.best,
                "last_eval_step": self.last_eval_step,
                "resumed_from": self.resumed_from,
                "records": self.metrics.count,
                "wall_s": self.prior_wall + time.monotonic() - self.t0,
                "train_s": self.prior_train_s + time.monotonic() - self.t0,
                "ranks": ranks,
                **self._extra_state(),
            },
        )

    def _next_ckpt_time(self) -> float:
        minutes = self.cfg.get("ckpt_every_minutes")
        return time.monotonic() + 60.0 * minutes if minutes else math.inf

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self.signal = signum

    def _agree_to_stop(self) -> tuple[bool, bool]:
        """(stop on a signal, checkpoint due by time), the same on every rank: one all-reduce of a
        checkpoint-due count and each rank's signal number where there are several ranks."""
        due = time.monotonic() >= self.next_ckpt_time
        if not self.world.distributed:
            return self.signal is not None, due
        flags = torch.zeros(1 + self.world.world_size, dtype=torch.float64, device=self.device)
        flags[0] = float(due)
        flags[1 + self.world.rank] = float(self.signal or 0)
        values = self.world.all_sum(flags).tolist()
        received = [int(v) for v in values[1:] if v]
        if received and self.signal is None:
            self.signal = received[0]
        return bool(received), values[0] > 0

    # -- logging -----------------------------------------------------------------------------
    def _record(self, values: dict[str, float]) -> None:
        epoch = self.step / self.spe
        self.metrics.write_dict(self.step, epoch, values)
        self.logger.log(values, self.step)
        self.last.update(values)

    def _log_point(self) -> bool:
        """Write the mean minibatch loss since the last log point and the diagnostics; False on NaN/inf."""
        if self.n_acc == 0:
            return True
        if self.world.distributed:  # each rank's loss is its share's; their mean is the global batch's
            self.world.all_sum(self.loss_acc).div_(self.world.world_size)
        loss = float(self.loss_acc) / self.n_acc
        values = {"batch/loss": loss}
        if self.diagnostics is not None:
            values.update({f"opt/{k}": float(v) for k, v in self.diagnostics().items()})
        self._record(values)
        window = (self.step - self.n_acc + 1, self.step)
        self.loss_acc.zero_()
        self.n_acc = 0
        if self.bar is not None:
            scale = next(
                (f"{k[4:]}={v:.3g}" for k, v in values.items() if k.startswith("opt/") and "skip" not in k),
                "",
            )
            self.bar.set_postfix_str(f"loss={loss:.4g} {scale}".strip(), refresh=False)
            self.bar.update(self.step - self.bar.n)
        if not math.isfinite(loss):
            self.diverged = {"diverged_step": self.step, "nonfinite_window": list(window)}
            return False
        return True

    def evaluate(self) -> None:
        """Task metrics, on the optimizer's averaged weights where it keeps them (DoG's averager)."""
        self.model.eval()
        eval_weights = getattr(self.opt, "evaluation_weights", contextlib.nullcontext)
        with eval_weights(), self.amp:
            values = {k: float(v) for k, v in self.task.evaluate(self.model).items()}
        self.model.train()
        self._record(values)
        for key, value in values.items():
            if math.isfinite(value) and (key not in self.best or is_better(key, value, self.best[key])):
                self.best[key] = value
        self.last_eval_step = self.step

    def _replicas_identical(self) -> bool:
        """Under DDP every rank holds the whole model; the copies must end bitwise equal (a collective)."""
        digest = hashlib.sha256()
        for p in self.model.parameters():
            digest.update(p.detach().cpu().contiguous().flatten().view(torch.uint8).numpy().tobytes())
        return len(set(self.world.gather_objects(digest.hexdigest()))) == 1

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.t0 = time.monotonic()
        self.next_ckpt_time = self._next_ckpt_time()
        self.diverged: dict[str, Any] | None = None
        start_step = self.step
        log_every = int(cfg["log_every_steps"])
        ckpt_every = int(cfg.get("ckpt_every_steps") or 0)
        eval_steps = int(cfg.get("eval_every_steps") or 0)
        eval_epochs = int(cfg.get("eval_every_epochs") or 0)
        clip = cfg.get("grad_clip")
        params = [p for p in self.model.parameters() if p.requires_grad]
        clear_grads = grad_clearer(self.opt, params)
        self.outer_handlers: dict[int, Any] = {}  # restored after the loop; see runners.train.run
        for sig in STOP_SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self.outer_handlers[sig] = signal.signal(sig, self._on_signal)
        self.bar = tqdm(total=self.total, initial=self.step, disable=not self.progress, dynamic_ncols=True)
        self.model.train()
        status = None
        try:
            while status is None and self.step < self.total and self.epoch < self.epochs:
                batches = self._batches(self.epoch)
                if self.in_epoch:
                    batches = islice(batches, self.in_epoch, None)
                epoch_done = True
                for batch in batches:
                    loss, logged = self._train_loss(batch)
                    clear_grads()
                    loss.backward()
                    if clip is not None:
                        torch.nn.utils.clip_grad_norm_(params, float(clip))
                    self.opt.step()
                    if self.sched is not None:
                        self.sched.step()
                    self.loss_acc.add_(logged.detach())
                    self.step += 1
                    self.in_epoch += 1
                    self.n_acc += 1
                    log_now = self.step % log_every == 0
                    if log_now and not self._log_point():
                        status = "diverged"
                        break
                    if eval_steps and self.step % eval_steps == 0:
                        self.evaluate()
                    # several ranks agree at log points only; one process looks at every step
                    stop, due = (
                        self._agree_to_stop() if log_now or not self.world.distributed else (False, False)
                    )
                    if stop:
                        self.save_checkpoint()
                        status = "preempted"
                        break
                    if (ckpt_every and self.step % ckpt_every == 0) or due:
                        self.save_checkpoint()
                    if self.step >= self.total:
                        epoch_done = self.in_epoch >= self.spe
                        break
                else:
                    epoch_done = True
                if status is not None or not epoch_done:
                    break
                self.epoch += 1
                self.in_epoch = 0
                if eval_epochs and self.epoch % eval_epochs == 0:
                    self.evaluate()
            if status is None:
                if not self._log_point():
                    status = "diverged"
                else:
                    if self.last_eval_step != self.step:
                        self.evaluate()
                    status = "completed"
                    if cfg.get("keep_checkpoint", True):
                        self.save_checkpoint()
        finally:
            self.bar.close()
            self.metrics.close()
            for sig, handler in self.outer_handlers.items():
                signal.signal(sig, handler)
        now = time.monotonic()
        train_s = self.prior_train_s + now - self.t0
        if status == "completed" and not cfg.get("keep_checkpoint", True) and self.world.is_main:
            (self.run_dir / checkpoint.FILENAME).unlink(missing_ok=True)
        out: dict[str, Any] = {
            "status": status,
            "final": copy.deepcopy(self.last),
            "best": copy.deepcopy(self.best),
            "steps": self.step,
            "epochs_done": self.step / self.spe,
            "steps_per_epoch": self.spe,
            "total_steps": self.total,
            "wall_s": self.prior_wall + now - self.t0,
            "steps_per_s": self.step / train_s if train_s > 0 else None,
            "session_steps_per_s": (self.step - start_step) / (now - self.t0) if now > self.t0 else None,
            "schedule": self.schedule_note,
            "resumed_from_steps": self.resumed_from,
            "device": str(self.device),
            "world_size": self.world.world_size,
            "distributed_strategy": self.world.strategy if self.world.distributed else None,
            "provenance": provenance(self.device, self.task.data_source),
        }
        if self.world.distributed and self.world.strategy == "ddp":
            out["replicas_identical"] = self._replicas_identical()
        if self.diverged:
            out.update(self.diverged)
        if status == "preempted":
            out["signal"] = signal.Signals(self.signal).name if self.signal else None
        return out
