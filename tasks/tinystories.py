"""TinyStories language modelling with llama2.c's 15M Llama (MetaOptimize Figs. 6/11, experiments.md MO-5).

Model: transformers ``LlamaForCausalLM`` with llama2.c's ``ModelArgs`` (dim 288, 6 layers, 6 heads,
sequence 256, tied embedding and output head, FFN width ``multiple_of``-rounded 2/3 x 4 x dim, RMSNorm eps
1e-5, no dropout): 15,191,712 parameters with the 32k Llama vocabulary, as llama2.c's ``model.py`` counts.
Attention runs through ``scaled_dot_product_attention`` (``attn_implementation="sdpa"``). llama2.c scales
the init of ``wo`` and ``w3`` (HF: ``o_proj`` and ``up_proj``) by 1/sqrt(2 n_layers); so do we.
``arch=gpt2`` builds ``GPT2LMHeadModel`` instead (fairseq's ``transformer_lm_gpt`` shape, D-Adaptation D-7).

Data (:mod:`tasks._pretok`): the corpus pre-tokenised once into uint16 files; a window is
``seq_len + 1`` tokens starting at a multiple of ``seq_len`` (llama2.c's ``PretokDataset``). An epoch is
``iters_per_epoch`` steps whose windows are drawn from successive permutations of all windows, seeded
by ``(seed, epoch)``. Evaluation: mean loss on ``eval_batches`` fixed batches of each split (the same for
every seed and run), as llama2.c's ``estimate_loss``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from tasks._pretok import Pretokenised, pretokenise, write_story_shards
from tasks.base import Scale, Task, register_task

FETCH = (
    "put TinyStories_all_data/*.json (llama2.c's `python tinystories.py download`) or a datasets "
    "save_to_disk folder there; substitute: python scripts/download_data.py kjv"
)


def llama2c_hidden_dim(dim: int, multiple_of: int) -> int:
    """llama2.c ``FeedForward``: 4*dim, then 2/3 of it, rounded up to a multiple of ``multiple_of``."""
    hidden = int(2 * (4 * dim) / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


@register_task("tinystories")
class TinyStories(Task):
    """``task=tinystories``; see ``configs/task/tinystories.yaml``."""

    #: a 15M-parameter step on 256 tokens per sequence costs seconds on a CPU core; smoke takes 2 sequences
    SMOKE_BATCH = 2

    def __init__(
        self,
        *,
        seed: int,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        scale: Scale = "paper",
        data_dir: str | Path = "data/TinyStories_all_data",
        tokenizer: str | None = None,
        cache_dir: str | Path = "data/cache/tinystories",
        arch: Literal["llama", "gpt2"] = "llama",
        vocab_size: Annotated[int, Field(ge=2)] = 32000,
        dim: Annotated[int, Field(ge=1)] = 288,
        n_layers: Annotated[int, Field(ge=1)] = 6,
        n_heads: Annotated[int, Field(ge=1)] = 6,
        n_kv_heads: int | None = None,
        multiple_of: Annotated[int, Field(ge=1)] = 32,
        dropout: Annotated[float, Field(ge=0, lt=1)] = 0.0,
        seq_len: Annotated[int, Field(ge=1)] = 256,
        batch_size: Annotated[int, Field(ge=1)] = 128,
        iters_per_epoch: Annotated[int, Field(ge=1)] = 1000,
        epochs: Annotated[int, Field(ge=1)] = 30,
        eval_batches: Annotated[int, Field(ge=1)] = 100,
    ) -> None:
        super().__init__(seed=seed, device=device, rank=rank, world_size=world_size, scale=scale)
        if dim % n_heads:
            raise ValueError(f"task.dim={dim} must divide by task.n_heads={n_heads}")
        if scale == "smoke":
            batch_size, eval_batches = min(batch_size, self.SMOKE_BATCH), 1
        self.check_batch_size(batch_size)
        if arch == "llama":
            self.config = LlamaConfig(
                vocab_size=vocab_size,
                hidden_size=dim,
                intermediate_size=llama2c_hidden_dim(dim, multiple_of),
                num_hidden_layers=n_layers,
                num_attention_heads=n_heads,
                num_key_value_heads=n_kv_heads or n_heads,
                max_position_embeddings=seq_len,
                rms_norm_eps=1e-5,
                attention_dropout=dropout,
                tie_word_embeddings=True,
                attn_implementation="sdpa",
            )
        else:  # fairseq transformer_lm_gpt (D-Adaptation D-7): pre-LN, GELU, FFN 4 x dim, learned positions
            self.config = GPT2Config(
                vocab_size=vocab_size,
                n_positions=seq_len,
                n_embd=dim,
                n_layer=n_layers,
                n_head=n_heads,
                n_inner=4 * dim,
                resid_pdrop=dropout,
                embd_pdrop=dropout,
                attn_pdrop=dropout,
                attn_implementation="sdpa",
            )
        self.arch = arch
        self.data: Pretokenised = pretokenise(data_dir, tokenizer, vocab_size, cache_dir, FETCH)
        self.seq_len, self.batch_size = seq_len, batch_size
        self.iters_per_epoch, self.epochs, self.eval_batches = iters_per_epoch, epochs, eval_batches
        self.windows = {}
        for split in ("train", "val"):
            n = self.data.tokens[split].size if split in self.data.tokens else 0
            if n < seq_len + 1:
                raise ValueError(
                    f"the {split} split has {n} tokens, fewer than one block of task.seq_len+1={seq_len + 1}"
                    f" ({self.data.source['data_dir']})"
                )
            self.windows[split] = (n - 1) // seq_len

    def build_model(self) -> torch.nn.Module:
        if self.arch == "gpt2":
            return GPT2LMHeadModel(self.config).to(self.device)
        model = LlamaForCausalLM(self.config)
        # llama2.c Transformer.__init__: scaled init of the residual projections wo and w3 (GPT-2 style)
        std = 0.02 / math.sqrt(2 * self.config.num_hidden_layers)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(("o_proj.weight", "up_proj.weight")):
                    p.normal_(0.0, std)
        return model.to(self.device)

    @property
    def steps_per_epoch(self) -> int:
        return self.iters_per_epoch

    def _window_ids(self, split: str, count: int, gen: torch.Generator) -> torch.Tensor:
        """``count`` window indices from successive permutations of all windows of ``split``."""
        n = self.windows[split]
        perms = [torch.randperm(n, generator=gen) for _ in range(-(-count // n))]
        return torch.cat(perms)[:count]

    def _batch(self, split: str, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.data.tokens[split]
        rows = np.stack(
            [tokens[i * self.seq_len : i * self.seq_len + self.seq_len + 1] for i in ids.tolist()]
        )
        block = torch.from_numpy(rows.astype(np.int64)).to(self.device, non_blocking=True)
        return block[:, :-1], block[:, 1:]

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        ids = self._window_ids("train", self.iters_per_epoch * self.batch_size, gen)
        start, stop, _ = self.rank_part(self.batch_size)  # batch divides by world_size: plain mean is exact
        for step in range(self.iters_per_epoch):
            yield self._batch("train", ids[step * self.batch_size + start : step * self.batch_size + stop])

    def loss(self, model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = batch
        logits = model(input_ids=x).logits
        return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.reshape(-1))

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        out = {}
        for split in ("train", "val"):
            gen = torch.Generator().manual_seed(12345)  # fixed: every run is scored on the same windows
            ids = self._window_ids(split, self.eval_batches * self.batch_size, gen)
            total = 0.0
            for b in range(self.eval_batches):
                batch = self._batch(split, ids[b * self.batch_size : (b + 1) * self.batch_size])
                total += float(self.loss(model, batch))
            out[f"{split}/loss"] = total / self.eval_batches
        return out

    @property
    def data_source(self) -> dict[str, Any]:
        return dict(self.data.source)

    @staticmethod
    def fixture_overrides(tmp_path: Path) -> list[str]:
        """Two tiny TinyStories-style JSON shards and the smoke overrides (tests/runners/test_experiments).

        The model keeps its class and layout but is narrowed, as bert_mlm's fixture takes its tiny BERT: two
        steps of D-7's 85M-parameter GPT (forward, Adam, checkpoint) took ~40 s of CPU, the test seconds.
        The 15M llama2.c model's shape is checked in tests/tasks/test_tinystories.py."""
        data = write_story_shards(tmp_path / "TinyStories_all_data", stories_per_shard=40)
        return [
            f"task.data_dir={data}",
            f"task.cache_dir={tmp_path / 'cache'}",
            "task.vocab_size=320",
            "task.seq_len=64",  # the fixture's 80 stories hold few 512-token blocks
            "task.dim=64",
            "task.n_layers=2",
            "task.n_heads=4",
        ]
