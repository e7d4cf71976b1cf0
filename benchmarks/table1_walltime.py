"""Table 1 speed: steps/s per optimizer on Letter (the largest embedded problem), and the job's wall time.

    python benchmarks/table1_walltime.py              # steps/s + ratio to SGD, and the estimated wall time
    python benchmarks/table1_walltime.py --run        # also time the real `make reproduce-table1`
    python benchmarks/table1_walltime.py --wandb      # also time one W&B offline init + finish

Steps/s are measured in this one process, in interleaved rounds (median of ``--rounds``), with the
runner's inner loop (``task.loss``, ``zero_grad``, ``backward``, ``step``) on one thread, so the ratios
to plain SGD are the per-step overhead of each optimizer at this size. The estimate multiplies every
planned run's step count by its optimizer's measured time per step and divides by ``JOBS``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import optimizers  # noqa: E402
from runners.reports.table1 import GRID, OPTIMIZERS  # noqa: E402
from scripts.reproduce_table1 import EXTRA, GRID_LRS, plan  # noqa: E402
from tasks._libsvm_data import DATASETS  # noqa: E402
from tasks.libsvm_logreg import LibsvmLogReg  # noqa: E402


def steps_per_s(task: LibsvmLogReg, cfg: dict, steps: int) -> float:
    """Optimizer steps per second of the runner's inner loop for ``cfg`` (after 50 warm-up steps)."""
    torch.manual_seed(0)
    model = task.build_model()
    opt = optimizers.build(cfg, model, steps_per_epoch=task.steps_per_epoch)
    batches = list(task.train_batches(0))
    for i in range(steps + 50):
        if i == 50:
            t0 = time.perf_counter()
        loss = task.loss(model, batches[i % len(batches)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - t0)


def measure(data: str, names: list[str], steps: int, rounds: int) -> dict[str, float]:
    torch.set_num_threads(1)
    task = LibsvmLogReg(seed=0, dataset="letter", root=data)
    cfgs = {"sgd (plain)": {"name": "sgd", "lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}}
    for n in names:
        f = REPO / "configs" / "optimizer" / f"{n}.yaml"
        if f.is_file():  # the config as the job runs it: with the job's protocol overrides
            extra = [o.removeprefix("optimizer.") for o in EXTRA.get(n, [])]
            merged = OmegaConf.merge(OmegaConf.load(f), OmegaConf.from_dotlist(extra))
            cfgs[n] = OmegaConf.to_container(merged)
    rates: dict[str, list[float]] = {k: [] for k in cfgs}
    for _ in range(rounds):
        for k, cfg in cfgs.items():
            rates[k].append(steps_per_s(task, cfg, steps))
    return {k: statistics.median(v) for k, v in rates.items()}


def estimate(rates: dict[str, float], data: str, seeds: int, jobs: int) -> tuple[float, int, int]:
    """(seconds, runs, steps) of the planned job, training time only, at the measured rates."""
    run_ds, _, opts = plan(Path(data), list(DATASETS), list(OPTIMIZERS))
    total_s, runs, steps = 0.0, 0, 0
    for d in run_ds:
        n_steps = 100 * -(-DATASETS[d].rows // 16)
        for o in opts:
            n = seeds * (len(GRID_LRS[o].split(",")) if o in GRID else 1)
            rate = rates.get(o, rates["sgd (plain)"])
            total_s += n * n_steps / rate
            runs, steps = runs + n, steps + n * n_steps
    return total_s / jobs, runs, steps


def time_wandb() -> float:
    import wandb

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        run = wandb.init(mode="offline", dir=tmp, project="lrbench-bench", config={"x": 1})
        run.log({"a": 1.0})
        run.finish()
        return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("LRBENCH_DATA", "data"))
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=int(os.environ.get("SEEDS", 3)))
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("JOBS", os.cpu_count() or 1)))
    ap.add_argument("--run", action="store_true", help="time `make reproduce-table1` in a fresh results dir")
    ap.add_argument("--wandb", action="store_true", help="time one W&B offline init + log + finish")
    args = ap.parse_args(argv)

    rates = measure(args.data, list(OPTIMIZERS), args.steps, args.rounds)
    base = rates["sgd (plain)"]
    print(
        f"Letter (15000 x 16, 26 classes), batch 16, 1 thread, median of {args.rounds} x {args.steps} steps"
    )
    print(f"{'optimizer':16s} {'steps/s':>9s} {'vs SGD':>7s}")
    for k, r in rates.items():
        print(f"{k:16s} {r:9.0f} {r / base:7.2f}")
    est, runs, steps = estimate(rates, args.data, args.seeds, args.jobs)
    print(f"planned job: {runs} runs, {steps / 1e6:.2f} M steps, {args.seeds} seeds, JOBS={args.jobs}")
    print(f"estimated training wall time: {est / 60:.1f} min (excludes process start-up and evaluation)")
    floor, _, _ = estimate(dict.fromkeys(rates, base), args.data, args.seeds, args.jobs)
    print(f"the same job with every run at plain SGD's rate: {floor / 60:.1f} min (fwd+bwd bound)")
    if args.wandb:
        print(f"one W&B offline init + log + finish: {time_wandb():.1f} s")
    if args.run:
        with tempfile.TemporaryDirectory() as tmp:
            env = {**os.environ, "LRBENCH_RESULTS": tmp, "SEEDS": str(args.seeds), "JOBS": str(args.jobs)}
            t0 = time.perf_counter()
            rc = subprocess.run(["make", "reproduce-table1"], cwd=REPO, env=env).returncode
            minutes = (time.perf_counter() - t0) / 60
            print(f"measured wall time of `make reproduce-table1`: {minutes:.1f} min (rc {rc})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
