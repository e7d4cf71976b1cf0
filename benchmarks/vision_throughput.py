"""CIFAR-10 ResNet-18 training throughput: our runner against a minimal hand-written loop, in one process.

    python -m benchmarks.vision_throughput                        # CPU, batch 8 (smoke size), 1 thread
    python -m benchmarks.vision_throughput --batch 512 --device cuda --precision bf16 --optimizer adamw

Both sides train the same model (``task=cifar``'s CIFAR-stem ResNet-18, built from the same seed) with
the same optimizer config, batch, augmentation (``crop_flip``: pad-4 crop + flip as one gather) and data
(a CIFAR-10 set in the real pickle layout, ``steps x batch`` images, whole on the device as uint8). The
runner side is ``runners.train.run`` on ``task=cifar`` for one epoch of ``steps`` steps (config checks,
run dir, metrics file, loss logging, the final test evaluation on ``Task.SMOKE_BATCH`` images included);
the hand-written side is the bare loop: gather, augment, normalise, forward, cross-entropy, backward,
step. Images/s = ``steps x batch`` / seconds of the whole call, interleaved over ``--rounds`` rounds
(medians), by the wall clock and by this process's CPU time (``time.process_time``): on a machine shared
with other jobs the wall clock of a call swings 2x from round to round, its CPU time much less. Target:
runner / hand >= 0.9.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf, open_dict

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import optimizers  # noqa: E402
from runners.build import seed_everything  # noqa: E402
from runners.train import CONFIG_DIR, run  # noqa: E402
from tasks._vision_models import build_model  # noqa: E402
from tasks.cifar import STATS, crop_flip, load_cifar, write_cifar_fixture  # noqa: E402


def runner_call(data: Path, results: Path, args: argparse.Namespace) -> tuple[float, float]:
    """Wall and CPU seconds of one ``runners.train.run`` of ``args.steps`` steps (a fresh run dir)."""
    overrides = [
        "task=cifar",
        f"task.root={data}",
        f"task.batch_size={args.batch}",
        "task.epochs=1",
        "task.model=resnet18",
        f"optimizer={args.optimizer}",
        "logger=none",
        "progress=false",
        f"device={args.device}",
        f"precision={args.precision}",
        f"torch_threads={args.threads}",
        f"results_dir={tempfile.mkdtemp(dir=results)}",
        "keep_checkpoint=false",
        "ckpt_every_minutes=null",
        f"log_every_steps={args.steps}",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra
    start, cpu = time.perf_counter(), time.process_time()
    code = run(cfg)
    seconds = time.perf_counter() - start, time.process_time() - cpu
    if code != 0:
        raise RuntimeError(f"runner exited with {code}")
    return seconds


def hand_call(data: Path, args: argparse.Namespace, device: torch.device) -> tuple[float, float]:
    """Wall and CPU seconds of the same training written by hand: data, model, optimizer, the steps."""
    start, cpu = time.perf_counter(), time.process_time()
    x_all, y_all = (t.to(device) for t in load_cifar(data, "cifar10", train=True))
    mean, std = (torch.tensor(s, device=device).view(1, 3, 1, 1) * 255 for s in STATS["cifar10"])
    seed_everything(0)
    model = build_model("resnet18", 10, cifar_stem=True, image_size=32).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    cfg = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "optimizer" / f"{args.optimizer}.yaml"))
    opt = optimizers.build(cfg, model, steps_per_epoch=args.steps)
    amp = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if args.precision == "bf16"
        else contextlib.nullcontext()
    )
    gen = torch.Generator().manual_seed(0)
    n = x_all.shape[0]
    perm = torch.randperm(n, generator=gen).to(device)
    shifts = torch.randint(0, 9, (n, 2), generator=gen).to(device)
    flips = torch.randint(0, 2, (n,), generator=gen).bool().to(device)
    model.train()
    for i in range(0, n, args.batch):
        idx = perm[i : i + args.batch]
        images = crop_flip(x_all, idx, shifts[i : i + args.batch], flips[i : i + args.batch], 4, "constant")
        x = ((images.float() - mean) / std).contiguous(
            memory_format=torch.channels_last if device.type == "cuda" else torch.contiguous_format
        )
        with amp:
            loss = F.cross_entropy(model(x), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8, help="batch size (8: Task.SMOKE_BATCH)")
    ap.add_argument("--steps", type=int, default=20, help="training steps per timed call")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are printed")
    ap.add_argument("--optimizer", default="sgd", help="configs/optimizer/<name>.yaml, on both sides")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads on both sides")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        data = write_cifar_fixture(Path(tmp) / "data", "cifar10", n_train=args.steps * args.batch, n_test=8)
        results = Path(tmp) / "results"
        results.mkdir()
        calls = {
            "runner": lambda: runner_call(data, results, args),
            "hand": lambda: hand_call(data, args, device),
        }
        for call in calls.values():  # warm-up: imports, allocator, kernels
            call()
        seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in calls}
        names = list(calls)
        for r in range(args.rounds):
            for name in names[r % 2 :] + names[: r % 2]:
                seconds[name].append(calls[name]())
    images = args.steps * args.batch
    print(
        f"CIFAR-10 ResNet-18, batch {args.batch}, {args.steps} steps, {args.optimizer}, {args.device} "
        f"{args.precision}, {args.threads} thread(s), {args.rounds} rounds"
    )
    ratios = {}
    for clock, k in (("wall", 0), ("cpu", 1)):
        rate = {name: images / statistics.median(t[k] for t in s) for name, s in seconds.items()}
        for name, s in seconds.items():
            rounds = ", ".join(f"{t[k]:.2f}" for t in s)
            print(f"{clock:>4} {name:>6}: {rate[name]:10.4g} images/s  (seconds per call: {rounds})")
        ratios[clock] = rate["runner"] / rate["hand"]
    print(f"runner / hand = {ratios['wall']:.3f} wall, {ratios['cpu']:.3f} cpu  (target >= 0.9)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
