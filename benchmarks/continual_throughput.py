"""Non-stationary CIFAR-100 speed: steps/s of AdamW and MetaOptimize on the batch-1 stream, one process.

    python benchmarks/continual_throughput.py                  # 2000 steps per sample, 3 rounds, 1 thread
    python benchmarks/continual_throughput.py --steps 500 --rounds 5 --threads 2

The MO-3 stream (``configs/experiment/metaoptimize_mo3_continual.yaml``: CIFAR-100 shapes, 10 tasks of
10 classes, SimpleCNN, crop + flip) at batch 1 is all per-step overhead. Two measurements, each a median
over interleaved, rotating rounds (as benchmarks/_timing.py), so a change in machine load hits both
optimizers alike, by wall clock and by this process's CPU time (on a shared machine the CPU time is
the work; the wall clock adds the waits for a core):

- ``step``: the runner's inner step alone (``task.loss``, ``zero_grad``, ``backward``, ``step``) on the
  task's own batches (``train_batches``: vectorised crop + flip per chunk, views per step);
- ``runner``: the whole runner (``runners.loop.Trainer``: logging every 100 steps, online accuracy and
  evaluation every 200, as the experiment config), its ``steps_per_s``; ``runner/step`` shows what the
  loop around the step costs.

It prints steps/s for AdamW (torch's, lr 1e-3, the grid's middle; as configured, ``fused: null``, torch's
for-loop kernel on a CPU, and with its fused kernel) and MetaOptimize (the experiment's 2-block (AdamW,
Adam)), the ratios MetaOptimize / AdamW (target >= 0.7) and the projected time of a full 50k-step run
(target < 3 min on a CPU); then the ``--members`` seeds (5, the paper's) as one batched program
(runners/batched.py; ``batched``: the inner step of the stacked models) against as many runs alone one
after another (the ``step`` rate over the member count), and their ratio. Pixel values do not change
the timing, so the images are synthetic (uniform uint8, CIFAR-100's 50000 x 3 x 32 x 32 and 10000 test
images) and no dataset is read.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import optimizers  # noqa: E402
import tasks.continual_cifar100 as cc  # noqa: E402
from runners.build import seed_everything  # noqa: E402
from runners.loggers import NoLogger  # noqa: E402
from runners.loop import Trainer  # noqa: E402

EXPERIMENT = "metaoptimize_mo3_continual"
#: the optimizers timed as a batched program of ``--members`` seeds too
BATCHED = ("adamw", "metaoptimize")
FULL_RUN_STEPS = 50_000


def synthetic_cifar100(train_images: int) -> Any:
    """A ``load_split`` stand-in: uniform uint8 images of CIFAR-100's shape, classes in equal blocks."""
    return functools.partial(_synthetic, train_images)


def _synthetic(
    train_images: int, _dataset: str, _root: Any, train: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    n = train_images if train else train_images // 5
    gen = torch.Generator().manual_seed(int(train))
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    return x, torch.arange(n) % 100


def experiment_config(optimizer: str, steps: int, results: Path) -> dict[str, Any]:
    """The resolved runner config of the experiment for ``optimizer``: ``metaoptimize`` (the experiment's
    own), ``adamw`` (its AdamW delta, lr 1e-3: torch picks its for-loop CPU kernel) or ``adamw_fused``
    (the same with torch's fused kernel, ``optimizer.fused=true``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    experiment = EXPERIMENT + ("_adamw" if optimizer.startswith("adamw") else "")
    fused = ["optimizer.fused=true"] if optimizer == "adamw_fused" else []
    overrides = [
        *fused,
        f"experiment={experiment}",
        f"max_steps={steps}",
        f"results_dir={results}",
        "progress=false",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def step_sampler(cfg: dict[str, Any], steps: int) -> Any:
    """A callable that runs the next ``steps`` steps of the stream (the runner's inner step, bare); a new
    pass over the stream when one ends."""
    task = cc.ContinualCifar100(seed=0, **{k: v for k, v in cfg["task"].items() if k != "name"})
    seed_everything(0)
    model = task.build_model()
    opt = optimizers.build(cfg["optimizer"], model, steps_per_epoch=task.steps_per_epoch)
    stream = itertools.chain.from_iterable(task.train_batches(e) for e in itertools.count())

    def run() -> None:
        for _ in range(steps):
            loss = task.loss(model, next(stream))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return run


def batched_sampler(cfg: dict[str, Any], steps: int, members: int) -> Any:
    """A callable that runs the next ``steps`` steps of ``members`` seeds as one batched program (the
    inner step of runners.batched.BatchedTrainer: stacked models, ``member_losses``, one optimizer with
    ``runs=members``)."""
    task = cc.ContinualCifar100(seed=0, **{k: v for k, v in cfg["task"].items() if k != "name"})
    models = []
    for seed in range(members):
        seed_everything(seed)
        models.append(task.build_model())
    model = task.stack_models(models)
    opt = optimizers.build(cfg["optimizer"], model, steps_per_epoch=task.steps_per_epoch, runs=members)
    seeds = list(range(members))
    stream = itertools.chain.from_iterable(task.member_batches(seeds, e) for e in itertools.count())

    def run() -> None:
        for _ in range(steps):
            losses = task.member_losses(model, next(stream))
            opt.zero_grad(set_to_none=True)
            losses.sum().backward()
            opt.step()

    return run


def runner_sampler(cfg: dict[str, Any], folder: Path) -> Any:
    """A callable that runs a fresh ``Trainer`` for ``cfg['max_steps']`` steps (built before timing)."""
    count = itertools.count()

    def run() -> None:
        run_dir = folder / str(next(count))
        run_dir.mkdir(parents=True)
        trainer = Trainer(cfg, run_dir, NoLogger(), progress=False)
        start = _clocks()
        trainer.run()
        run.elapsed = tuple(b - a for a, b in zip(start, _clocks(), strict=True))  # type: ignore[attr-defined]

    return run


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000, help="steps per timed sample")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (batch 1 gains nothing from more)")
    ap.add_argument("--train-images", type=int, default=50_000, help="stream length (CIFAR-100: 50000)")
    ap.add_argument("--members", type=int, default=5, help="seeds in the batched program (the paper's 5)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = ("adamw", "adamw_fused", "metaoptimize")
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        mock.patch.object(cc, "load_split", synthetic_cifar100(args.train_images)),
        mock.patch.object(cc, "split_files", lambda dataset, root: []),
    ):
        cfgs = {n: experiment_config(n, args.steps, Path(tmp)) for n in names}
        candidates = {}
        for n in names:  # each bare sampler's stream covers warm-up + every round
            candidates[n, "step"] = step_sampler(cfgs[n], args.steps)
            candidates[n, "runner"] = runner_sampler(cfgs[n], Path(tmp) / n)
        for n in BATCHED:
            candidates[n, "batched"] = batched_sampler(cfgs[n], args.steps, args.members)
        keys = list(candidates)
        for key in keys:  # warm-up
            candidates[key]()
        for r in range(args.rounds):  # interleaved, rotating, so load drifts hit every candidate alike
            for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
                start = _clocks()
                candidates[key]()
                elapsed = getattr(candidates[key], "elapsed", None)
                if elapsed is None:
                    elapsed = tuple(b - a for a, b in zip(start, _clocks(), strict=True))
                samples.setdefault(key, []).append(elapsed)
    rate = {
        (key, clock): args.steps / statistics.median(s[clock] for s in values)
        for key, values in samples.items()
        for clock in (0, 1)
    }
    print(
        f"device cpu, torch {torch.__version__}, {args.threads} thread(s), "
        f"{args.steps} steps x {args.rounds} rounds; steps/s by wall clock (by this process's CPU time)"
    )
    print(f"{'optimizer':<14}{'step':>20}{'runner':>20}{'runner/step':>13}{'50k run (min)':>15}")
    for n in names:
        step, run = ((n, "step"), 0), ((n, "runner"), 0)
        step_cpu, run_cpu = ((n, "step"), 1), ((n, "runner"), 1)
        minutes = FULL_RUN_STEPS / rate[run] / 60
        print(
            f"{n:<14}{rate[step]:>10.1f} ({rate[step_cpu]:>6.1f}){rate[run]:>10.1f} ({rate[run_cpu]:>6.1f})"
            f"{rate[run] / rate[step]:>13.2f}{minutes:>15.1f}"
        )
    print(
        f"{args.members} seeds as one batched program against {args.members} runs alone one after another "
        "(step; steps/s of the program, each step one step of every seed; wall clock (CPU time))"
    )
    print(f"{'optimizer':<14}{'batched':>20}{f'{args.members} alone':>20}{'speedup':>13}")
    for n in BATCHED:
        alone = [rate[(n, "step"), clock] / args.members for clock in (0, 1)]
        batched = [rate[(n, "batched"), clock] for clock in (0, 1)]
        print(
            f"{n:<14}{batched[0]:>10.1f} ({batched[1]:>6.1f}){alone[0]:>10.1f} ({alone[1]:>6.1f})"
            f"{batched[0] / alone[0]:>13.2f}"
        )
    for base in ("adamw", "adamw_fused"):
        for clock, what in ((0, "wall"), (1, "cpu")):
            step = rate[("metaoptimize", "step"), clock] / rate[(base, "step"), clock]
            run = rate[("metaoptimize", "runner"), clock] / rate[(base, "runner"), clock]
            print(f"MetaOptimize / {base} ({what}): step {step:.2f}, runner {run:.2f} (target >= 0.7)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
