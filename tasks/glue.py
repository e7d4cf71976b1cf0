"""GLUE fine-tuning from one of our BERT MLM checkpoints (Mechanic M-2, Tables 1/9/10; experiments.md M-2).

Data: local TSV files with a header, in Hugging Face ``glue``'s column names, under
``<data_dir>/<subtask>/``: ``train.tsv`` and the dev split(s) ``validation.tsv`` (MNLI:
``validation_matched.tsv`` and ``validation_mismatched.tsv``). Columns: MNLI ``premise, hypothesis,
label``; QNLI ``question, sentence, label``; SST-2 ``sentence, label``; QQP ``question1, question2,
label``; an ``idx`` column may be present. Any other column is an error naming it. Labels are GLUE's
integers or their names (MNLI entailment/neutral/contradiction, QNLI entailment/not_entailment).

Model: ``BertForSequenceClassification`` with the pre-training run's BERT config (from its
``config.yaml``), its encoder weights (``checkpoint.pt``) and its tokenizer (the file its data source
records); the pooler and classifier start fresh. Dropout and attention dropout are task keys (Table 9:
0.1/0.1; Table 10, Mechanic: 0.0/0.1). Metrics: dev accuracy (%) of each dev split, and F1 for QQP.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
import torch
import yaml
from pydantic import Field
from transformers import BertConfig, BertForSequenceClassification

from tasks.base import DatasetMissingError, Scale, Task, register_task
from tasks.bert_mlm import MODELS, load_tokenizer_of_run

#: subtask -> (text columns, dev splits, label names)
SUBTASKS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "mnli": (
        ("premise", "hypothesis"),
        ("validation_matched", "validation_mismatched"),
        ("entailment", "neutral", "contradiction"),
    ),
    "qnli": (("question", "sentence"), ("validation",), ("entailment", "not_entailment")),
    "sst2": (("sentence",), ("validation",), ("negative", "positive")),
    "qqp": (("question1", "question2"), ("validation",), ("not_duplicate", "duplicate")),
}
FETCH = "write the GLUE TSVs (Hugging Face glue column names) there"


def read_split(path: Path, subtask: str) -> tuple[list[tuple[str, ...]], torch.Tensor]:
    """(texts per row, labels) of one GLUE TSV; wrong columns or labels are errors naming them."""
    if not path.is_file():
        raise DatasetMissingError(f"GLUE {subtask} split", str(path), FETCH)
    columns, _, names = SUBTASKS[subtask]
    frame = pd.read_csv(path, sep="\t", quoting=3, dtype=str, keep_default_na=False)
    unexpected = sorted(set(frame.columns) - {*columns, "label", "idx"})
    missing = [c for c in (*columns, "label") if c not in frame.columns]
    if unexpected or missing:
        raise ValueError(
            f"{path}: unexpected columns {unexpected}, missing columns {missing} for GLUE {subtask}"
        )
    lookup = {**{n: i for i, n in enumerate(names)}, **{str(i): i for i in range(len(names))}}
    bad = sorted(set(frame["label"]) - set(lookup))
    if bad:
        raise ValueError(f"{path}: labels {bad[:5]} are not among {list(lookup)}")
    labels = torch.tensor([lookup[v] for v in frame["label"]], dtype=torch.long)
    return list(zip(*(frame[c].tolist() for c in columns), strict=True)), labels


@register_task("glue")
class Glue(Task):
    """``task=glue task.dataset=mnli task.checkpoint=<bert_mlm run dir>``; see ``configs/task/glue.yaml``."""

    def __init__(
        self,
        *,
        seed: int,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        scale: Scale = "paper",
        dataset: Literal["mnli", "qnli", "sst2", "qqp"] = "mnli",
        data_dir: str | Path = "data/glue",
        checkpoint: str | Path | None = None,
        max_length: Annotated[int, Field(ge=4)] = 128,
        dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1,
        attention_dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1,
        batch_size: Annotated[int, Field(ge=1)] = 32,
        epochs: Annotated[int, Field(ge=1)] = 10,
        eval_examples: int | None = None,
    ) -> None:
        super().__init__(seed=seed, device=device, rank=rank, world_size=world_size, scale=scale)
        if scale == "smoke":
            batch_size, eval_examples = min(batch_size, self.SMOKE_BATCH), 16
        self.check_batch_size(batch_size)
        if checkpoint is None:
            raise ValueError(
                "task.checkpoint is required: a bert_mlm run folder (results/runs/<experiment>/<run_id>)"
            )
        run_dir = Path(checkpoint)
        if run_dir.is_file():  # the run's checkpoint.pt named instead of its folder
            run_dir = run_dir.parent
        for name in ("config.yaml", "summary.json", "checkpoint.pt"):
            if not (run_dir / name).is_file():
                raise DatasetMissingError(
                    "pre-trained BERT run (config.yaml, summary.json, checkpoint.pt)",
                    str(run_dir / name),
                    "python -m runners.train experiment=mechanic_m1_... keep_checkpoint=true",
                )
        pre = yaml.safe_load((run_dir / "config.yaml").read_text())["task"]
        if pre.get("name") != "bert_mlm":
            raise ValueError(f"task.checkpoint: {run_dir} is a {pre.get('name')!r} run, not bert_mlm")
        summary = json.loads((run_dir / "summary.json").read_text())
        self.tokenizer = load_tokenizer_of_run(summary["provenance"]["data_source"]["tokenizer"])
        columns, dev_splits, names = SUBTASKS[dataset]
        folder = Path(data_dir) / dataset
        self.splits = {
            s: self._encode(*read_split(folder / f"{s}.tsv", dataset), max_length)
            for s in ("train", *dev_splits)
        }
        if eval_examples is not None:
            self.splits.update(
                {s: {k: v[:eval_examples] for k, v in self.splits[s].items()} for s in dev_splits}
            )
        self.config = BertConfig(
            vocab_size=pre["vocab_size"],
            max_position_embeddings=pre["seq_len"],
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=attention_dropout,
            num_labels=len(names),
            pad_token_id=self.tokenizer.pad_token_id,
            **MODELS[pre["model"]],
        )
        if max_length > pre["seq_len"]:
            raise ValueError(
                f"task.max_length={max_length} exceeds the checkpoint's seq_len={pre['seq_len']}"
            )
        self.weights = run_dir / "checkpoint.pt"
        self.subtask, self.dev_splits = dataset, dev_splits
        self.batch_size, self.epochs = batch_size, epochs
        self._source = {
            "kind": f"GLUE {dataset} TSV",
            "files": [str(folder / f"{s}.tsv") for s in self.splits],
            "rows": {s: int(len(v["labels"])) for s, v in self.splits.items()},
            "checkpoint": str(self.weights),
        }

    def _encode(
        self, texts: list[tuple[str, ...]], labels: torch.Tensor, max_length: int
    ) -> dict[str, torch.Tensor]:
        columns = list(zip(*texts, strict=True)) if texts else [[]]
        enc = self.tokenizer(
            *columns, truncation=True, max_length=max_length, padding="max_length", return_tensors="pt"
        )
        return {**{k: v for k, v in enc.items()}, "labels": labels}

    def build_model(self) -> torch.nn.Module:
        model = BertForSequenceClassification(self.config)
        state = torch.load(self.weights, map_location="cpu", weights_only=False)["model"]
        encoder = {k: v for k, v in state.items() if k.startswith("bert.")}
        missing, _ = model.load_state_dict(encoder, strict=False)
        fresh = [k for k in missing if not k.startswith(("bert.pooler.", "classifier."))]
        if fresh:
            raise ValueError(f"the checkpoint lacks encoder weights {fresh[:5]}")
        return model.to(self.device)

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.splits["train"]["labels"]) // self.batch_size)

    def train_batches(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        train = self.splits["train"]
        n = len(train["labels"])
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        for i in range(0, n, self.batch_size):
            start, stop, _ = self.rank_part(min(self.batch_size, n - i))
            ids = perm[i + start : i + stop]
            yield {k: v[ids].to(self.device) for k, v in train.items()}

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch).loss

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        out = {}
        for split in self.dev_splits:
            data = self.splits[split]
            preds = torch.cat(
                [
                    model(**{k: v[i : i + 256].to(self.device) for k, v in data.items() if k != "labels"})
                    .logits.argmax(-1)
                    .cpu()
                    for i in range(0, len(data["labels"]), 256)
                ]
            )
            labels = data["labels"]
            out[f"{split}/accuracy"] = 100.0 * float((preds == labels).float().mean())
            if self.subtask == "qqp":
                tp = float(((preds == 1) & (labels == 1)).sum())
                out[f"{split}/f1"] = (
                    100.0 * 2 * tp / max(float((preds == 1).sum() + (labels == 1).sum()), 1.0)
                )
        return out

    @property
    def data_source(self) -> dict[str, Any]:
        return dict(self._source)

    @staticmethod
    def fixture_overrides(tmp_path: Path) -> list[str]:
        """Tiny SST-2/MNLI TSVs and a tiny bert_mlm run folder as the runner writes one."""
        from tasks.bert_mlm import write_pretrained_run

        run = write_pretrained_run(tmp_path / "pretrain")
        write_glue_tsvs(tmp_path / "glue")
        return [f"task.data_dir={tmp_path / 'glue'}", f"task.checkpoint={run}", "task.max_length=32"]


def write_glue_tsvs(folder: Path, rows: int = 24) -> Path:
    """Tiny GLUE TSVs (HF column names) for every subtask."""
    words = "ka lo mi ten ra sun vel do re pin tor ash".split()
    for subtask, (columns, dev_splits, names) in SUBTASKS.items():
        (folder / subtask).mkdir(parents=True, exist_ok=True)
        for split in ("train", *dev_splits):
            frame = pd.DataFrame(
                {
                    "idx": range(rows),
                    **{
                        c: [" ".join(words[(i + j) % 12] for j in range(5)) for i in range(rows)]
                        for c in columns
                    },
                    "label": [names[i % len(names)] for i in range(rows)],
                }
            )
            frame.to_csv(folder / subtask / f"{split}.tsv", sep="\t", index=False)
    return folder
