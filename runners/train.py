"""``python -m runners.train`` / ``lrbench-train``: train one task with one optimizer (Hydra app).

Examples::

    python -m runners.train task=toy optimizer=adam optimizer.lr=1e-2 logger=none
    python -m runners.train -m task=toy optimizer=sgd optimizer.lr=1e-3,1e-2 seed=0,1 launcher=joblib
    python -m runners.train experiment=<paper>_<item> seed=3

The same command always maps to the same run dir (:func:`runners.store.run_id`): a completed run is
skipped, an interrupted one resumes from its checkpoint. Exit codes: 0 completed or diverged (and
0 for a failed member of a multirun, whose failure is recorded in its summary), 2 bad input,
128+signal when preempted (SIGTERM/SIGUSR1; this also ends a sweep; under SLURM submitit requeues the
job instead), 1 for a crash.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from runners import batched, distributed, schema, store
from runners.build import pick_device
from runners.errors import EXIT_BAD_INPUT, ConfigError
from runners.loggers import NoLogger, make_logger
from runners.loop import Trainer
from tasks.base import DatasetMissingError

FINISHED = ("completed", "diverged")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def _hydra() -> Any | None:
    return HydraConfig.get() if HydraConfig.initialized() else None


def is_multirun() -> bool:
    hc = _hydra()
    return hc is not None and hc.mode == RunMode.MULTIRUN


def group_name(cfg: DictConfig) -> str:
    """The results folder / W&B group: ``group``, else the chosen experiment, else ``adhoc``."""
    if cfg.get("group"):
        return str(cfg.group)
    hc = _hydra()
    experiment = hc.runtime.choices.get("experiment") if hc is not None else None
    return str(experiment) if experiment else "adhoc"


def run_dir_for(cfg: DictConfig, container: dict[str, Any]) -> Path:
    root = Path(hydra.utils.to_absolute_path(str(cfg.results_dir)))
    return root / "runs" / group_name(cfg) / store.run_id(container)


def _progress(cfg: DictConfig) -> bool:
    if cfg.progress == "auto":
        return sys.stderr.isatty() and not is_multirun()
    return bool(cfg.progress)


def _identity(cfg: DictConfig, container: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    return {
        "run_id": run_dir.name,
        "group": run_dir.parent.name,
        "task": container["task"]["name"],
        "dataset": container["task"].get("dataset"),
        "optimizer": container["optimizer"]["name"],
        "optimizer_config": _optimizer_choice(container),
        "seed": container["seed"],
        "config_hash": store.config_hash(container),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
    }


def _optimizer_choice(container: dict[str, Any]) -> str:
    """The ``configs/optimizer/<choice>.yaml`` the run composed (``mechanic_adam``; several configs may
    build one registered class), else the registered name."""
    hc = _hydra()
    choice = hc.runtime.choices.get("optimizer") if hc is not None else None
    return str(choice) if choice else str(container["optimizer"]["name"])


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _fail(
    run_dir: Path, identity: dict[str, Any], container: dict[str, Any], message: str, detail: str
) -> None:
    store.atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(container))
    store.atomic_write_json(
        run_dir / "summary.json", {**identity, "status": "failed", "error": message, "finished_at": _now()}
    )
    store.atomic_write_text(run_dir / "error.txt", detail)


def _relaunch(cfg: DictConfig, run_dir: Path) -> int:
    """``launcher=torchrun``: this run on ``launcher.nproc_per_node`` processes; the exit code its
    recorded status implies (torchrun's own code when none was recorded)."""
    hc = _hydra()
    overrides = list(hc.overrides.task) if hc is not None else []
    code = distributed.relaunch(cfg.launcher.nproc_per_node, pick_device(cfg.device), overrides)
    summary = store.read_summary(run_dir) or {}
    if summary.get("status") in FINISHED:
        return 0
    if summary.get("status") == "preempted" and summary.get("signal"):
        return 128 + int(signal.Signals[summary["signal"]])
    return code or 1


def _is_launcher_process(cfg: DictConfig) -> bool:
    """True in the process that ``launcher=torchrun`` starts from (not yet one of the ranks)."""
    return OmegaConf.select(cfg, "launcher.nproc_per_node") is not None and "RANK" not in os.environ


def _bad_input_reason(exc: ConfigError | DatasetMissingError) -> str:
    """``key: message``, for the one-line error and the failed run's record (``HYDRA_FULL_ERROR=1``
    re-raises, for the traceback)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise exc
    if isinstance(exc, ConfigError):
        return f"{exc.key}: {exc.message}"
    return f"task: {exc}"


def run(cfg: DictConfig) -> int:
    """Train the run ``cfg`` describes (or skip/resume it); return the process exit code.

    Under torchrun or SLURM with several tasks every rank runs this; rank 0 alone writes the store.
    """
    multirun = is_multirun()
    try:
        container = schema.resolve(cfg)
    except ConfigError as exc:  # no run dir to record it in: the config does not resolve
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if container.get("members"):
        return _run_group(cfg, multirun)
    run_dir = run_dir_for(cfg, container)
    identity = _identity(cfg, container, run_dir)
    previous = store.read_summary(run_dir)
    if previous is not None and previous.get("status") in FINISHED:
        if os.environ.get("RANK", "0") == "0":
            print(f"{run_dir}: already completed (status {previous['status']}), skipping")
        return 0
    started = _now()
    trainer: Trainer | None = None
    world: distributed.World | None = None
    try:
        schema.validate(container)  # before any work, and before torchrun starts the ranks
        if _is_launcher_process(cfg):
            return _relaunch(cfg, run_dir)
        world = distributed.setup(pick_device(str(cfg.device)), str(cfg.distributed.strategy))
        trainer = Trainer(
            container, run_dir, NoLogger(), progress=_progress(cfg) and world.is_main, world=world
        )
        if not world.is_main:
            return _follow(trainer)
        store.atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(container))
        trainer.logger = make_logger(
            container["logger"],
            run_dir,
            run_config=container,
            name=run_dir.name,
            group=identity["group"],
            tags=_tags(identity),
        )
        if trainer.resumed_from:
            print(f"{run_dir}: resuming from step {trainer.step}")
        result = trainer.run()
    except (ConfigError, DatasetMissingError) as exc:
        reason = _bad_input_reason(exc)
        if world is None or world.is_main:
            print(f"error: {reason}", file=sys.stderr)
        if multirun and (world is None or world.is_main):
            _fail(run_dir, identity, container, reason, traceback.format_exc())
            return 0
        return EXIT_BAD_INPUT
    except Exception as exc:
        if world is not None and not world.is_main:
            raise
        if trainer is not None:
            with contextlib.suppress(Exception):
                trainer.logger.finish(exit_code=1)
        if not multirun:
            _fail(run_dir, identity, container, f"{type(exc).__name__}: {exc}", traceback.format_exc())
            raise
        print(f"error: {run_dir.name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        _fail(run_dir, identity, container, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        return 0
    _finish(run_dir, identity, result, trainer.logger, started)
    status = result["status"]
    if status == "preempted":  # also ends a sweep: its finished members are skipped when it is re-run
        signum = signal.Signals[result["signal"]]
        hand_on_signal(trainer.outer_handlers.get(signum), signum)
        return 128 + int(signum)
    return 0


def _finish(
    run_dir: Path, identity: dict[str, Any], result: dict[str, Any], logger: Any, started: str
) -> None:
    """Write a finished (or preempted) run's summary, close its logger, print its one line."""
    summary = {**identity, **result, "started_at": started, "finished_at": _now()}
    summary["wandb"] = {"mode": logger.mode, "id": logger.run_id}
    store.atomic_write_json(run_dir / "summary.json", summary)
    status = result["status"]
    logger.summary(
        {"status": status, **{f"final/{k}": v for k, v in result["final"].items()}}
        | {f"best/{k}": v for k, v in result["best"].items()}
    )
    logger.finish(exit_code=0 if status in FINISHED else 1)
    shown = ", ".join(f"{k}={v:.4g}" for k, v in result["final"].items() if not k.startswith("opt/"))
    print(f"{status}: {run_dir} ({result['steps']} steps, {result['wall_s']:.1f}s) {shown}")


def _run_group(cfg: DictConfig, multirun: bool) -> int:
    """A batched group (``members``, runners/batched.py): its unfinished members trained as one program,
    each recorded as its own run; the exit code as for one run."""
    started = _now()
    containers = [schema.resolve(c) for c in batched.member_configs(cfg)]
    run_dirs = [run_dir_for(cfg, c) for c in containers]
    todo = [i for i, d in enumerate(run_dirs) if (store.read_summary(d) or {}).get("status") not in FINISHED]
    for i in sorted(set(range(len(run_dirs))) - set(todo)):
        print(f"{run_dirs[i]}: already completed, skipping")
    if not todo:
        return 0
    containers, run_dirs = [containers[i] for i in todo], [run_dirs[i] for i in todo]
    identities = [_identity(cfg, c, d) for c, d in zip(containers, run_dirs, strict=True)]
    valid = []
    for i, c in enumerate(containers):  # a member with a bad value fails alone, as it would alone
        try:
            schema.validate(c)
            valid.append(i)
        except ConfigError as exc:
            print(f"error: {exc.key}: {exc.message}", file=sys.stderr)
            if not multirun:
                return EXIT_BAD_INPUT
            _fail(run_dirs[i], identities[i], c, f"{exc.key}: {exc.message}", traceback.format_exc())
    if not valid:
        return 0
    containers, run_dirs, identities = ([x[i] for i in valid] for x in (containers, run_dirs, identities))
    trainer: batched.BatchedTrainer | None = None
    try:
        if _is_launcher_process(cfg) or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("members", "a batched group runs on one process (set batch_runs=false)")
        opt_cfg = batched.group_optimizer(containers)
        trainer = batched.BatchedTrainer(containers, run_dirs, opt_cfg, progress=_progress(cfg))
        for r, (c, d, ident) in enumerate(zip(containers, run_dirs, identities, strict=True)):
            store.atomic_write_text(d / "config.yaml", OmegaConf.to_yaml(c))
            trainer.loggers[r] = make_logger(
                c["logger"], d, run_config=c, name=d.name, group=ident["group"], tags=_tags(ident)
            )
        if trainer.resumed_from:
            print(f"{trainer.run_dir}: resuming {len(run_dirs)} batched runs from step {trainer.step}")
        result = trainer.run()
    except (ConfigError, DatasetMissingError) as exc:
        reason = _bad_input_reason(exc)
        print(f"error: {reason}", file=sys.stderr)
        if not multirun:
            return EXIT_BAD_INPUT
        for c, d, ident in zip(containers, run_dirs, identities, strict=True):
            _fail(d, ident, c, reason, traceback.format_exc())
        return 0
    except Exception as exc:
        for c, d, ident in zip(containers, run_dirs, identities, strict=True):
            _fail(d, ident, c, f"{type(exc).__name__}: {exc}", traceback.format_exc())
        if not multirun:
            raise
        print(f"error: batched group failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 0
    for r, res in enumerate(trainer.member_results(result)):
        _finish(run_dirs[r], identities[r], res, trainer.loggers[r], started)
    if result["status"] == "preempted":
        signum = signal.Signals[result["signal"]]
        hand_on_signal(trainer.outer_handlers.get(signum), signum)
        return 128 + int(signum)
    return 0


def _tags(identity: dict[str, Any]) -> list[str]:
    tags = [f"task:{identity['task']}", f"optimizer:{identity['optimizer']}", f"seed:{identity['seed']}"]
    if identity["dataset"] is not None:
        tags.append(f"dataset:{identity['dataset']}")
    return tags


def _follow(trainer: Trainer) -> int:
    """A rank other than 0: train in step with rank 0, write nothing; the exit code of the status."""
    result = trainer.run()
    if result["status"] == "preempted" and result.get("signal"):
        return 128 + int(signal.Signals[result["signal"]])
    return 0


def hand_on_signal(handler: Any, signum: int) -> None:
    """Pass a stop signal, once checkpointed, to the Python handler the training loop displaced. Under
    SLURM that is submitit's: it requeues the job, which resumes here from the checkpoint."""
    if callable(handler):
        handler(signum, None)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _app(cfg: DictConfig) -> None:
    try:
        code = run(cfg)
    finally:
        distributed.teardown()
    if code:
        sys.exit(code)


def main() -> None:
    """Console script ``lrbench-train``."""
    _app()


if __name__ == "__main__":
    main()
