"""Non-stationary CIFAR-100 speed: steps/s of AdamW and MetaOptimize on the batch-1 stream, one process.

    python benchmarks/continual_throughput.py                  # 2000 steps per sample, 3 rounds, 1 thread
    python benchmarks/continual_throughput.py --steps 500 --rounds 5 --threads 2

The MO-3 stream (``configs/experiment/metaoptimize_mo3_continual.yaml``: CIFAR-100 shapes, 10 tasks of
10 classes, SimpleCNN, crop + flip) at batch 1 is all per-step overhead. Two measurements, each a median
over interleaved rounds (benchmarks/_timing.py), so a change in machine load hits both optimizers alike:

- ``step``: the runner's inner step alone (``task.loss``, ``zero_grad``, ``backward``, ``step``) on the
  task's own batches (``train_batches``: vectorised crop + flip per chunk, views per step);
- ``runner``: the whole runner (``runners.loop.Trainer``: logging every 100 steps, online accuracy and
  evaluation every 200, as the experiment config), its ``steps_per_s``; ``runner/step`` shows what the
  loop around the step costs.

It prints steps/s for AdamW (torch's, lr 1e-3, the grid's middle) and MetaOptimize (the experiment's
2-block (AdamW, Adam)), the ratio MetaOptimize / AdamW (target >= 0.7) and the projected time of a full
50k-step run (target < 3 min on a CPU). Pixel values do not change the timing, so the images are
synthetic (uniform uint8, CIFAR-100's 50000 x 3 x 32 x 32 and 10000 test images) and no dataset is read.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import optimizers  # noqa: E402
import tasks.continual_cifar100 as cc  # noqa: E402
from benchmarks._timing import round_robin  # noqa: E402
from runners.loggers import NoLogger  # noqa: E402
from runners.loop import Trainer, seed_everything  # noqa: E402

EXPERIMENT = "metaoptimize_mo3_continual"
FULL_RUN_STEPS = 50_000


def synthetic_cifar100(_dataset: str, _root: Any, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    n = 50_000 if train else 10_000
    gen = torch.Generator().manual_seed(int(train))
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    return x, torch.arange(100).repeat_interleave(n // 100)


def experiment_config(optimizer: str, steps: int, results: Path) -> dict[str, Any]:
    """The resolved runner config of the experiment with ``optimizer`` (its yaml for adamw at lr 1e-3)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    experiment = EXPERIMENT + ("_adamw" if optimizer == "adamw" else "")
    overrides = [f"experiment={experiment}", f"max_steps={steps}", f"results_dir={results}", "progress=false"]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    return OmegaConf.to_container(cfg, resolve=True)


def step_sampler(cfg: dict[str, Any], steps: int) -> Any:
    """A callable that runs the next ``steps`` steps of the stream (the runner's inner step, bare)."""
    task = cc.ContinualCifar100(seed=0, **{k: v for k, v in cfg["task"].items() if k != "name"})
    seed_everything(0)
    model = task.build_model()
    opt = optimizers.build(cfg["optimizer"], model, steps_per_epoch=task.steps_per_epoch)
    stream = iter(task.train_batches(0))

    def run() -> None:
        for _ in range(steps):
            loss = task.loss(model, next(stream))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    return run


def runner_rate(cfg: dict[str, Any], run_dir: Path) -> float:
    trainer = Trainer(cfg, run_dir, NoLogger(), progress=False)
    return float(trainer.run()["steps_per_s"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000, help="steps per timed sample")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (batch 1 gains nothing from more)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = ("adamw", "metaoptimize")
    with tempfile.TemporaryDirectory() as tmp, mock.patch.object(cc, "load_split", synthetic_cifar100):
        cfgs = {n: experiment_config(n, args.steps, Path(tmp)) for n in names}
        samplers = {n: step_sampler(cfgs[n], args.steps * (args.rounds + 1)) for n in names}
        # each sampler holds a stream long enough for warm-up + every round
        bare = round_robin({n: samplers[n] for n in names}, rounds=args.rounds)
        runner: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.rounds):
            for n in names if r % 2 == 0 else names[::-1]:
                runner[n].append(runner_rate(cfgs[n], Path(tmp) / f"{n}-{r}"))
    step_rate = {n: args.steps / statistics.median(bare[n]) for n in names}
    run_rate = {n: statistics.median(runner[n]) for n in names}
    print(
        f"device cpu, torch {torch.__version__}, {args.threads} thread(s), "
        f"{args.steps} steps x {args.rounds} rounds"
    )
    print(
        f"{'optimizer':<14}{'step steps/s':>14}{'runner steps/s':>16}{'runner/step':>13}{'50k run (min)':>15}"
    )
    for n in names:
        minutes = FULL_RUN_STEPS / run_rate[n] / 60
        print(
            f"{n:<14}{step_rate[n]:>14.1f}{run_rate[n]:>16.1f}"
            f"{run_rate[n] / step_rate[n]:>13.2f}{minutes:>15.1f}"
        )
    print(
        f"MetaOptimize / AdamW: step {step_rate['metaoptimize'] / step_rate['adamw']:.2f}, "
        f"runner {run_rate['metaoptimize'] / run_rate['adamw']:.2f} (target >= 0.7)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
