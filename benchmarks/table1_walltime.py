"""Table 1 speed: batched runs against runs alone on Letter, and the job's wall time.

    python benchmarks/table1_walltime.py                 # ratios for R = 1, 6, 18, 60
    python benchmarks/table1_walltime.py --runs 1,18     # other group sizes
    python benchmarks/table1_walltime.py --run           # also time `make reproduce-table1` (fresh results)

For every optimizer of Table 1 (``configs/table/table1.yaml``, with its protocol overrides) on Letter (the
largest embedded problem, 15000 x 16, 26 classes, batch 16), in this one process and on one thread:
steps/s of the runner's inner loop for one run alone (``task.loss``, the runner's gradient clearing,
``backward``, ``step``), and of a batched group of R members (``task.member_losses``, the sum's
``backward``, one ``step`` of the optimizer built with ``runs=R``). A grid baseline's members take the
table's grid LRs in turn, as Table 1 groups them (one group per problem: every LR x every seed); the
LR-free methods' members share their defaults. ``ratio`` = R x group steps/s / alone steps/s: how many
runs a batched step buys for the price of one run's step. Rates are medians of interleaved rounds, so a
change in machine load hits every row alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import optimizers  # noqa: E402
from runners.build import seed_everything  # noqa: E402
from runners.loop import grad_clearer  # noqa: E402
from runners.reports.table1 import protocol  # noqa: E402
from tasks.libsvm_logreg import LibsvmLogReg  # noqa: E402


def table_configs() -> dict[str, dict]:
    """Each Table 1 optimizer's config as the job runs it (its yaml plus the protocol's overrides); a grid
    baseline's ``lr`` is its grid, one value per member in turn (a run alone takes 1e-2)."""
    out = {}
    for name, spec in protocol()["optimizers"].items():
        cfg = OmegaConf.load(REPO / "configs" / "optimizer" / f"{name}.yaml")
        for override in spec.get("overrides", []):
            key, _, value = override.removeprefix("optimizer.").partition("=")
            OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)
        if spec.get("grid"):
            cfg.lr = spec["grid"]
        out[name] = OmegaConf.to_container(cfg, resolve=True)
    return out


def _rate(step: Callable[[int], None], steps: int) -> float:
    for i in range(50):  # warm-up
        step(i)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    return steps / (time.perf_counter() - t0)


def alone_rate(task: LibsvmLogReg, cfg: dict, steps: int) -> float:
    seed_everything(0)
    model = task.build_model()
    lr = cfg.get("lr")
    cfg = {**cfg, "lr": 1e-2} if isinstance(lr, list) else cfg
    opt = optimizers.build(cfg, model, steps_per_epoch=task.steps_per_epoch)
    clear_grads = grad_clearer(opt, list(model.parameters()))
    batches = list(task.train_batches(0))

    def step(i: int) -> None:
        loss = task.loss(model, batches[i % len(batches)])
        clear_grads()
        loss.backward()
        opt.step()

    return _rate(step, steps)


def batched_rate(task: LibsvmLogReg, cfg: dict, runs: int, steps: int) -> float | None:
    """Group steps/s of ``runs`` members (None where the optimizer has no run dimension)."""
    if optimizers.batch_keys(cfg["name"]) is None:
        return None
    models = []
    for seed in range(runs):
        seed_everything(seed)
        models.append(task.build_model())
    model = task.stack_models(models)
    lr = cfg.get("lr")
    cfg = {**cfg, "lr": [lr[r % len(lr)] for r in range(runs)]} if isinstance(lr, list) else cfg
    opt = optimizers.build(cfg, model, steps_per_epoch=task.steps_per_epoch, runs=runs)
    clear_grads = grad_clearer(opt, list(model.parameters()))
    batches = list(task.member_batches(list(range(runs)), 0))

    def step(i: int) -> None:
        losses = task.member_losses(model, batches[i % len(batches)])
        clear_grads()
        losses.sum().backward()
        opt.step()

    return _rate(step, steps)


def measure(data: str, sizes: list[int], steps: int, rounds: int) -> dict[str, dict]:
    torch.set_num_threads(1)
    task = LibsvmLogReg(seed=0, dataset="letter", root=data)
    cfgs = table_configs()
    rates: dict[str, dict] = {name: {"alone": [], **{r: [] for r in sizes}} for name in cfgs}
    for _ in range(rounds):
        for name, cfg in cfgs.items():
            rates[name]["alone"].append(alone_rate(task, cfg, steps))
            for r in sizes:
                rates[name][r].append(batched_rate(task, cfg, r, steps))
    return {
        name: {k: None if None in v else statistics.median(v) for k, v in per.items()}
        for name, per in rates.items()
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("LRBENCH_DATA", "data"))
    ap.add_argument("--runs", default="1,6,18,60", help="group sizes R (comma list)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--run", action="store_true", help="time `make reproduce-table1` in a fresh results dir")
    args = ap.parse_args(argv)
    sizes = [int(r) for r in args.runs.split(",")]

    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)")
    rates = measure(args.data, sizes, args.steps, args.rounds)
    print(f"Letter, batch 16, 1 thread, median of {args.rounds} x {args.steps} steps")
    head = f"{'optimizer':14s} {'alone/s':>8s}" + "".join(f" {f'R={r} /s':>9s} {'ratio':>6s}" for r in sizes)
    print(head)
    for name, per in rates.items():
        line = f"{name:14s} {per['alone']:8.0f}"
        for r in sizes:
            g = per[r]
            line += f" {'n/a':>9s} {'n/a':>6s}" if g is None else f" {g:9.0f} {r * g / per['alone']:6.1f}"
        print(line)
    print("ratio = R x group steps/s / alone steps/s; n/a: the optimizer has no run dimension")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.run:
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "LRBENCH_RESULTS": tmp}
            t0 = time.perf_counter()
            rc = subprocess.run(["make", "reproduce-table1"], cwd=REPO, env=env).returncode
            minutes = (time.perf_counter() - t0) / 60
            print(f"measured wall time of `make reproduce-table1`: {minutes:.1f} min (rc {rc})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
