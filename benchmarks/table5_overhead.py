"""Table 5 (MetaOptimize Table 1, MO-6): every optimizer's per-iteration time and memory overhead vs AdamW.

Both models of the paper, measured side by side in one process, each optimizer on its own copy of the
model, iterations interleaved round-robin (``benchmarks._timing``):

- ResNet-18 (torchvision, 1000 classes) at ImageNet resolution (224 px);
- the 15M llama2.c model (transformers ``LlamaConfig``: dim 288, 6 layers, 6 heads, vocab 32000, hidden
  768), sequence 256 at paper size.

Time overhead = per round (T_alg / T_AdamW − 1), mean ± SE over rounds, as the paper's
(T_alg − T_AdamW)/T_AdamW. Memory overhead: on a GPU the peak allocated memory of one iteration at the
same batch (``torch.cuda.max_memory_allocated``); on CPU the bytes of parameters + gradients + optimizer
state (activations excluded, being the same for every optimizer). The paper's measure is the ratio of the
largest batch that fits; both are stated in the table.

    python -m benchmarks.table5_overhead                      # CPU, reduced: batch 2 / 2 x 128 tokens
    python -m benchmarks.table5_overhead --paper-size         # batch 256 / 128 x 256 tokens (a GPU)
Writes ``results/benchmarks/table5_overhead.json`` (per-round seconds kept); ``make table5`` turns it
into Table 5.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F

import optimizers
from benchmarks._overhead_measure import STEPS_PER_EPOCH
from benchmarks._timing import round_robin
from benchmarks.optimizer_overhead import discover

OUT = Path("results") / "benchmarks" / "table5_overhead.json"
#: (batch, tokens per sequence or image side) at paper size and at the CPU size this script defaults to
SIZES = {
    "resnet18": {"paper": (256, 224), "cpu": (2, 224)},
    "llama15m": {"paper": (128, 256), "cpu": (2, 128)},
}
EXTRA = {"metaoptimize/adamw+lion": ("metaoptimize", {"base": "adamw", "meta": "lion"})}  # the paper's row


def resnet18() -> torch.nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=1000)


def llama15m() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=288,
        intermediate_size=768,
        num_hidden_layers=6,
        num_attention_heads=6,
        num_key_value_heads=6,
        vocab_size=32000,
        max_position_embeddings=256,
        tie_word_embeddings=True,  # llama2.c shares the embedding and output weights: 15M parameters
    )
    return LlamaForCausalLM(cfg)


def batch_for(model: str, size: tuple[int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    n, side = size
    if model == "resnet18":
        x, y = torch.randn(n, 3, side, side, generator=gen), torch.randint(0, 1000, (n,), generator=gen)
    else:
        x = torch.randint(0, 32000, (n, side), generator=gen)
        y = x
    return x.to(device), y.to(device)


def loss_fn(model_name: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if model_name == "resnet18":
        return F.cross_entropy(model(x), y)
    return model(input_ids=x, labels=y).loss


def optimizer_configs() -> dict[str, dict[str, Any]]:
    """Every optimizer config of the suite (``benchmarks.optimizer_overhead.discover``, not its fused
    duplicates), AdamW first, plus MetaOptimize (AdamW, Lion) as the paper runs it."""
    rows, _ = discover()
    cfgs = {r.label: r.cfg for r in rows if "(fused)" not in r.label and (r.ours or r.cfg["name"] == "adamw")}
    for label, (stem, over) in EXTRA.items():
        base = next((c for k, c in cfgs.items() if c["name"] == stem), None)
        if base is not None:
            cfgs[label] = {**base, **over}
    return dict(sorted(cfgs.items(), key=lambda kv: kv[0] != "adamw"))


def state_bytes(opt: Any, model: torch.nn.Module) -> int:
    """Bytes of parameters, gradients and every tensor reachable from the optimizer object (its
    ``state``, a wrapped base optimizer's, any buffer it keeps as an attribute), each storage once."""
    seen_storages: set[int] = set()
    seen_objects: set[int] = set()

    def walk(obj: Any, depth: int) -> int:
        if isinstance(obj, torch.Tensor):
            key = obj.untyped_storage().data_ptr()
            if key in seen_storages or obj.device.type == "meta":
                return 0
            seen_storages.add(key)
            return obj.untyped_storage().nbytes()
        if (
            depth > 6
            or id(obj) in seen_objects
            or isinstance(obj, str | bytes | int | float | torch.nn.Module)
        ):
            return 0
        seen_objects.add(id(obj))
        if isinstance(obj, dict):
            return sum(walk(v, depth + 1) for v in obj.values())
        if isinstance(obj, list | tuple | set):
            return sum(walk(v, depth + 1) for v in obj)
        if hasattr(obj, "__dict__"):
            return walk(vars(obj), depth + 1)
        return 0

    params = list(model.parameters())
    return walk(params, 0) + walk([p.grad for p in params if p.grad is not None], 0) + walk(opt, 0)


def measure(model_name: str, size: tuple[int, int], device: torch.device, rounds: int) -> pd.DataFrame:
    """One model: every optimizer's per-round iteration seconds and its memory, side by side."""
    template = {"resnet18": resnet18, "llama15m": llama15m}[model_name]().to(device)
    x, y = batch_for(model_name, size, device)
    steps: dict[str, Callable[[], None]] = {}
    built: dict[str, tuple[Any, torch.nn.Module]] = {}
    failed: dict[str, str] = {}
    for label, cfg in optimizer_configs().items():
        model = copy.deepcopy(template)
        try:
            opt = optimizers.build(cfg, model, steps_per_epoch=STEPS_PER_EPOCH)
        except Exception as err:  # one optimizer that does not build: say so, time the rest
            failed[label] = f"{type(err).__name__}: {err}"
            continue

        def step(model: torch.nn.Module = model, opt: Any = opt) -> None:
            loss_fn(model_name, model, x, y).backward()
            opt.step()
            opt.zero_grad(set_to_none=False)  # gradients stay allocated: the memory measure counts them

        steps[label], built[label] = step, (opt, model)
    peak: dict[str, float] = {}
    for label, step in steps.items():  # first step (lazy state); on a GPU its own peak memory
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
            # the other models' memory is resident throughout: this model's params + the step's growth
            own = sum(p.numel() * p.element_size() for p in built[label][1].parameters())
            peak[label] = torch.cuda.max_memory_allocated() - before + own
    timed = {
        k: (lambda s=s: (s(), torch.cuda.synchronize() if device.type == "cuda" else None))
        for k, s in steps.items()
    }
    samples = round_robin(timed, rounds=rounds, warmup=1, desc=f"{model_name} rounds")
    rows = []
    for label, seconds in samples.items():
        opt, model = built[label]
        mem = peak.get(label, state_bytes(opt, model))
        rows.append({"model": model_name, "optimizer": label, "seconds": seconds, "memory_bytes": mem})
    rows += [{"model": model_name, "optimizer": k, "error": v} for k, v in failed.items()]
    out = pd.DataFrame(rows)
    out["batch"], out["size"] = size
    out["memory_measure"] = "peak allocated, one iteration" if device.type == "cuda" else "params+grads+state"
    out["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--paper-size", action="store_true", help="the paper's batch and sequence (needs a GPU)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="resnet18,llama15m")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    which = "paper" if args.paper_size else "cpu"
    frames = [measure(m, SIZES[m][which], device, args.rounds) for m in args.models.split(",")]
    df = pd.concat(frames, ignore_index=True).assign(sizes=which)
    df["seconds"] = df["seconds"].map(lambda s: s if isinstance(s, list) else [])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    df.to_json(args.out, orient="records", indent=1)
    print(f"# {device}, {args.threads} threads, {args.rounds} interleaved rounds, sizes {which}")
    print(f"written: {args.out} (make table5 builds Table 5 from it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
