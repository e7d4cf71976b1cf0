"""Training tokens/s of llama2.c's 15M model: our runner against a minimal hand-written loop, one process.

    python -m benchmarks.lm_throughput                          # CPU: batch 4 x 256, 4 steps, 3 rounds
    python -m benchmarks.lm_throughput --batch 128 --steps 20   # on a GPU: the paper's 128 x 256

Both candidates train the same model (``configs/task/tinystories.yaml``'s 15M Llama, 32000-token
vocabulary) with the same torch AdamW (``experiment=metaoptimize_mo5_adamw_fixed``) and batch, in fp32 on
CPU (bf16 autocast with ``--bf16``). The data are a synthetic corpus written to a temporary folder in
TinyStories' JSON-shard layout, with a 32000-word WordLevel ``tokenizer.json`` so that the vocabulary
matches the real model's (tokens/s does not depend on the text).

- ``runner``: :class:`runners.loop.Trainer` built (untimed) from the composed config, ``Trainer.run``
  timed over ``--steps`` steps, less its end-of-run evaluation (timed apart and subtracted).
- ``hand loop``: llama2.c/nanoGPT style: random windows from the token tensor, ``model(x).logits``,
  cross-entropy, backward, ``step``, ``zero_grad(set_to_none=True)``.

Rounds alternate the two (:func:`benchmarks._timing.round_robin`), tokens/s is the median over rounds
(each candidate's own timing of its steps; the warm-up call is dropped),
``ratio`` = runner / hand loop (target >= 0.9). On a GPU it also prints MFU against ``--peak-tflops``
(6 N per token for the parameters plus 12 L T d for attention, PaLM's estimate as in llama2.c).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._timing import medians, round_robin  # noqa: E402
from runners import schema  # noqa: E402
from runners.build import seed_everything  # noqa: E402
from runners.loggers import NoLogger  # noqa: E402
from runners.loop import Trainer  # noqa: E402
from runners.train import CONFIG_DIR  # noqa: E402

VOCAB = 32000
#: the timer: wall clock (default), or this process's CPU time (``--clock cpu``), which a loaded shared
#: machine distorts far less for a one-thread run
CLOCK = [time.perf_counter]


def write_corpus(folder: Path, tokens_needed: int) -> Path:
    """Two JSON shards of random words and a WordLevel tokenizer.json of exactly ``VOCAB`` tokens."""
    vocab = {"<s>": 0, "<unk>": 1, **{f"w{i}": i for i in range(2, VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.save(str(folder / "tokenizer.json"))
    rng = np.random.default_rng(0)
    story = 500
    for shard, count in ((0, 4), (1, tokens_needed // story + 2)):
        rows = [{"story": " ".join(f"w{i}" for i in rng.integers(2, VOCAB, story))} for _ in range(count)]
        (folder / f"data{shard:02d}.json").write_text(json.dumps(rows))
    return folder


def config(folder: Path, batch: int, steps: int, threads: int, bf16: bool) -> dict[str, Any]:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    overrides = [
        "experiment=metaoptimize_mo5_adamw_fixed",
        "logger=none",
        "progress=false",
        f"task.data_dir={folder}",
        f"task.tokenizer={folder / 'tokenizer.json'}",
        f"task.cache_dir={folder / 'cache'}",
        f"task.vocab_size={VOCAB}",
        f"task.batch_size={batch}",
        "task.eval_batches=1",
        f"max_steps={steps}",
        "eval_every_epochs=0",
        "keep_checkpoint=false",
        "ckpt_every_minutes=null",
        f"torch_threads={threads}",
        f"precision={'bf16' if bf16 else 'fp32'}",
    ]
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    return schema.resolve(cfg)


def runner_candidate(cfg: dict[str, Any], folder: Path, timings: list[float]) -> Any:
    """A fresh :class:`Trainer` per call (not timed); appends the seconds of ``Trainer.run`` less its
    end-of-run evaluation to ``timings``."""

    def call() -> None:
        with tempfile.TemporaryDirectory(dir=folder) as run_dir:
            trainer = Trainer(cfg, Path(run_dir), NoLogger(), progress=False)
            evaluate, evaluating = trainer.evaluate, [0.0]

            def timed_evaluate() -> None:
                start = CLOCK[0]()
                evaluate()
                evaluating[0] += CLOCK[0]() - start

            trainer.evaluate = timed_evaluate  # type: ignore[method-assign]
            start = CLOCK[0]()
            trainer.run()
            timings.append(CLOCK[0]() - start - evaluating[0])

    return call


def hand_candidate(cfg: dict[str, Any], task: Any, steps: int, bf16: bool, timings: list[float]) -> Any:
    """llama2.c's inner loop on the same model, optimizer and batch; the model is built untimed."""
    device = task.device
    data = torch.from_numpy(task.data.tokens["train"].astype(np.int64))
    batch, seq = task.batch_size, task.seq_len
    opt_cfg = cfg["optimizer"]
    amp = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def call() -> None:
        seed_everything(0)
        model = task.build_model()
        opt = torch.optim.AdamW(
            model.parameters(), lr=opt_cfg["lr"], betas=opt_cfg["betas"], weight_decay=opt_cfg["weight_decay"]
        )
        start = CLOCK[0]()
        for _ in range(steps):
            ix = torch.randint(len(data) - seq - 1, (batch,))
            block = torch.stack([data[i : i + seq + 1] for i in ix.tolist()]).to(device)
            x, y = block[:, :-1], block[:, 1:]
            with amp:
                logits = model(input_ids=x).logits
            loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.reshape(-1))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings.append(CLOCK[0]() - start)

    return call


def flops_per_token(task: Any, n_params: int) -> float:
    cfg = task.config
    return 6 * n_params + 12 * cfg.num_hidden_layers * task.seq_len * cfg.hidden_size


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per timed call")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="cpu: this process's CPU time")
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="GPU peak for MFU (H100 SXM bf16)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    CLOCK[0] = time.process_time if args.clock == "cpu" else time.perf_counter
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_corpus(Path(tmp), tokens_needed=args.batch * 257 * 4)
        cfg = config(folder, args.batch, args.steps, args.threads, args.bf16)
        probe = Trainer(cfg, folder / "probe", NoLogger(), progress=False)
        n_params = sum(p.numel() for p in probe.model.parameters())
        timings: dict[str, list[float]] = {"runner": [], "hand loop": []}
        candidates = {
            "runner": runner_candidate(cfg, folder, timings["runner"]),
            "hand loop": hand_candidate(cfg, probe.task, args.steps, args.bf16, timings["hand loop"]),
        }
        round_robin(candidates, rounds=args.rounds, warmup=1, desc="rounds")  # interleaving only
        seconds = medians({name: t[1:] for name, t in timings.items()})  # the warm-up call dropped
        tokens = args.steps * args.batch * probe.task.seq_len
        rates = {name: tokens / s for name, s in seconds.items()}
        device = probe.device
    print(
        f"llama2.c 15M: {n_params:,} parameters, batch {args.batch} x {probe.task.seq_len}, "
        f"{args.steps} steps per call, {args.rounds} rounds, device {device}, {args.threads} thread(s), "
        f"{'bf16' if args.bf16 else 'fp32'}, {args.clock} clock; model building and the runner's "
        "end-of-run evaluation untimed"
    )
    for name, rate in rates.items():
        line = f"{name:10s} {rate:10.0f} tokens/s"
        if device.type == "cuda":
            mfu = rate * flops_per_token(probe.task, n_params) / (args.peak_tflops * 1e12)
            line += f"  MFU {100 * mfu:.1f}%"
        print(line)
    ratio = rates["runner"] / rates["hand loop"]
    print(f"ratio runner / hand loop: {ratio:.3f} (target >= 0.9)")
    return {**rates, "ratio": ratio}


if __name__ == "__main__":
    main()
