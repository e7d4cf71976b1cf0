"""BERT masked-LM pre-training, RoBERTa-style (Mechanic M-1/M-6, D-Adaptation D-6; experiments.md).

Model: transformers ``BertForMaskedLM`` from a config, random init, nothing downloaded: ``bert-base``
(12 x 768, 110M), ``bert-large`` (24 x 1024, 340M) or ``tiny`` (2 x 64, for tests). No NSP head, no
sentence pairs: blocks of ``seq_len`` tokens packed from the concatenated corpus (RoBERTa's
FULL-SENTENCES), each ``[CLS] ... [SEP]``. Masking: 15% of the tokens, 80% [MASK] / 10% random / 10% kept
(``DataCollatorForLanguageModeling``), drawn from a generator seeded by ``(seed, epoch, step)`` so a batch
is a pure function of them. Evaluation: MLM loss and accuracy on the masked positions of ``eval_batches``
held-out batches masked with a fixed seed (every run is scored on the same masks).

Corpus (Wikibooks / BookWiki layout: one document or paragraph per row): a ``datasets`` folder from
``DatasetDict.save_to_disk`` with ``train`` and ``validation`` splits and a ``text`` column, or a folder
with ``train.txt`` and ``validation.txt`` (``load_dataset("text")``, one line a row). Tokenised once with
``datasets.map(num_proc=...)`` into cache files under ``cache_dir``. Tokenizer: a BERT uncased WordPiece
``vocab.txt`` (or a ``tokenizer.json``) from a local path, or a WordPiece trained on the training split
with ``tokenizers`` (``BertWordPieceTokenizer``); the data source records which.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import datasets
import numpy as np
import torch
from pydantic import Field
from tokenizers import BertWordPieceTokenizer
from transformers import BertConfig, BertForMaskedLM, DataCollatorForLanguageModeling, PreTrainedTokenizerFast

from tasks.base import DatasetMissingError, Scale, Task, register_task

FETCH = "save the corpus (train/validation, a 'text' column) with DatasetDict.save_to_disk there"
MODELS: dict[str, dict[str, int]] = {
    "bert-base": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
    "bert-large": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
    },
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 128},
}
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def load_corpus(data_dir: Path) -> tuple[datasets.DatasetDict, list[Path]]:
    """The corpus's ``train``/``validation`` splits and the files read."""
    if (data_dir / "dataset_dict.json").is_file():
        dd = datasets.load_from_disk(str(data_dir))
    elif (data_dir / "train.txt").is_file() and (data_dir / "validation.txt").is_file():
        files = {s: str(data_dir / f"{s}.txt") for s in ("train", "validation")}
        dd = datasets.load_dataset("text", data_files=files, cache_dir=str(data_dir / ".hf_cache"))
    else:
        raise DatasetMissingError(
            "MLM corpus (a datasets save_to_disk folder or train.txt + validation.txt)", str(data_dir), FETCH
        )
    for split in ("train", "validation"):
        if split not in dd or "text" not in dd[split].column_names:
            raise ValueError(f"{data_dir}: expected splits 'train' and 'validation' with a 'text' column")
    files = sorted(p for p in data_dir.rglob("*") if p.is_file() and ".hf_cache" not in p.parts)
    return dd, files


def _fast_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    """A BERT uncased WordPiece from ``vocab.txt`` or a ``tokenizer.json``, with BERT's special tokens."""
    if path.suffix == ".json":
        tok = PreTrainedTokenizerFast(tokenizer_file=str(path))
    else:
        backend = BertWordPieceTokenizer(str(path), lowercase=True)._tokenizer
        tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    tok.add_special_tokens(
        dict(zip(("pad_token", "unk_token", "cls_token", "sep_token", "mask_token"), SPECIALS, strict=True))
    )
    return tok


def load_tokenizer_of_run(record: dict[str, Any]) -> PreTrainedTokenizerFast:
    """The tokenizer a bert_mlm run's data source records (``tokenizer`` entry)."""
    path = Path(record["path"])
    if not path.is_file():
        raise DatasetMissingError(
            "the pre-training run's tokenizer", str(path), "re-run the pre-training task once"
        )
    return _fast_tokenizer(path)


def wordpiece(tokenizer: str | None, train_texts: datasets.Dataset, vocab_size: int, cache: Path) -> Any:
    """(tokenizer, record) from ``vocab.txt``/``tokenizer.json``, or a WordPiece trained on the corpus."""
    if tokenizer is not None:
        path = Path(tokenizer)
        vocab = path / "vocab.txt" if path.is_dir() else path
        if not vocab.is_file():
            raise DatasetMissingError(
                "tokenizer (a BERT vocab.txt or tokenizer.json)", str(vocab), "set task.tokenizer=null"
            )
        record = {
            "kind": "file",
            "path": str(vocab),
            "sha256": hashlib.sha256(vocab.read_bytes()).hexdigest(),
        }
    else:
        vocab = cache / f"wordpiece{vocab_size}.json"
        if not vocab.is_file():
            trained = BertWordPieceTokenizer(lowercase=True)
            texts = (row["text"] for row in train_texts)
            trained.train_from_iterator(
                texts, vocab_size=vocab_size, special_tokens=SPECIALS, show_progress=False
            )
            trained.save(str(vocab))
        record = {"kind": "trained_wordpiece", "vocab_size": vocab_size, "path": str(vocab)}
    tok = _fast_tokenizer(vocab)
    if len(tok) != vocab_size:
        raise ValueError(
            f"tokenizer vocabulary ({len(tok)} tokens) does not match the model's vocab_size={vocab_size}"
        )
    return tok, record


def file_records(files: list[Path], memo: Path) -> list[dict[str, Any]]:
    """Path, size and sha256 of each corpus file, hashed once per cache entry (the cache key already
    covers names, sizes and mtimes)."""
    if not memo.is_file():
        records = []
        for path in files:
            digest = hashlib.sha256()
            with path.open("rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(1 << 20), b""):
                    digest.update(chunk)
            records.append(
                {"path": str(path.resolve()), "bytes": path.stat().st_size, "sha256": digest.hexdigest()}
            )
        memo.write_text(json.dumps(records))
    return json.loads(memo.read_text())


@register_task("bert_mlm")
class BertMLM(Task):
    """``task=bert_mlm``; see ``configs/task/bert_mlm.yaml``."""

    def __init__(
        self,
        *,
        seed: int,
        device: torch.device | str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        scale: Scale = "paper",
        data_dir: str | Path = "data/wikibooks",
        tokenizer: str | None = None,
        cache_dir: str | Path = "data/cache/bert_mlm",
        model: Literal["bert-base", "bert-large", "tiny"] = "bert-base",
        vocab_size: Annotated[int, Field(ge=8)] = 30522,
        seq_len: Annotated[int, Field(ge=4)] = 512,
        dropout: Annotated[float, Field(ge=0, lt=1)] = 0.1,
        mlm_probability: Annotated[float, Field(gt=0, lt=1)] = 0.15,
        batch_size: Annotated[int, Field(ge=1)] = 2048,
        iters_per_epoch: Annotated[int, Field(ge=1)] = 1000,
        epochs: Annotated[int, Field(ge=1)] = 150,
        eval_batches: Annotated[int, Field(ge=1)] = 20,
        num_proc: Annotated[int, Field(ge=1)] = 1,
    ) -> None:
        super().__init__(seed=seed, device=device, rank=rank, world_size=world_size, scale=scale)
        if scale == "smoke":
            batch_size, eval_batches = min(batch_size, self.SMOKE_BATCH), 1
        self.check_batch_size(batch_size)
        data_dir = Path(data_dir)
        dd, files = load_corpus(data_dir)
        stamp = [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]
        key = hashlib.sha256(
            json.dumps([str(data_dir.resolve()), stamp, tokenizer, vocab_size, seq_len]).encode()
        )
        cache = Path(cache_dir) / key.hexdigest()[:16]
        cache.mkdir(parents=True, exist_ok=True)
        self.tokenizer, tok_record = wordpiece(tokenizer, dd["train"], vocab_size, cache)
        self.blocks = {s: self._pack(dd[s], cache / s, seq_len, num_proc) for s in ("train", "validation")}
        for split, blocks in self.blocks.items():
            if len(blocks) == 0:
                raise ValueError(
                    f"the {split} split is shorter than one block of task.seq_len={seq_len} tokens"
                )
        self.config = BertConfig(
            vocab_size=vocab_size,
            max_position_embeddings=seq_len,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
            pad_token_id=self.tokenizer.pad_token_id,
            **MODELS[model],
        )
        self.collator = DataCollatorForLanguageModeling(
            self.tokenizer, mlm=True, mlm_probability=mlm_probability
        )
        self.batch_size, self.seq_len = batch_size, seq_len
        self.iters_per_epoch, self.epochs, self.eval_batches = iters_per_epoch, epochs, eval_batches
        self._source = {
            "kind": "bert_mlm packed blocks",
            "data_dir": str(data_dir),
            "files": file_records(files, cache / "files.json"),
            "blocks": {s: int(len(b)) for s, b in self.blocks.items()},
            "tokenizer": tok_record,
            "cache": str(cache),
        }

    def _pack(self, ds: datasets.Dataset, cache: Path, seq_len: int, num_proc: int) -> np.ndarray:
        """Tokenise (``datasets.map``, cached) and pack into ``[CLS] tokens [SEP]`` blocks of ``seq_len``."""
        tok = self.tokenizer
        body = seq_len - 2

        def encode(batch: dict[str, list[str]]) -> dict[str, list[list[int]]]:
            return {"ids": tok(batch["text"], add_special_tokens=False)["input_ids"]}

        def pack(batch: dict[str, list[list[int]]]) -> dict[str, list[list[int]]]:
            flat = [t for ids in batch["ids"] for t in ids]
            n = len(flat) // body
            return {
                "block": [
                    [tok.cls_token_id, *flat[i * body : (i + 1) * body], tok.sep_token_id] for i in range(n)
                ]
            }

        cache.mkdir(parents=True, exist_ok=True)
        ids = ds.map(
            encode,
            batched=True,
            num_proc=num_proc,
            remove_columns=ds.column_names,
            cache_file_name=str(cache / "ids.arrow"),
        )
        blocks = ids.map(
            pack,
            batched=True,
            batch_size=1000,
            remove_columns=["ids"],
            cache_file_name=str(cache / "blocks.arrow"),
        )
        if len(blocks) == 0:  # fewer tokens than one block: no rows, no column
            return np.zeros((0, seq_len), dtype=np.int64)
        return np.asarray(blocks["block"], dtype=np.int64).reshape(-1, seq_len)

    def build_model(self) -> torch.nn.Module:
        return BertForMaskedLM(self.config).to(self.device)

    @property
    def steps_per_epoch(self) -> int:
        return self.iters_per_epoch

    def _masked(self, rows: np.ndarray, seed: int) -> dict[str, torch.Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            batch = self.collator([{"input_ids": torch.from_numpy(r)} for r in rows])
        return {k: v.to(self.device) for k, v in batch.items()}

    def train_batches(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        n = len(self.blocks["train"])
        count = self.iters_per_epoch * self.batch_size
        order = torch.cat([torch.randperm(n, generator=gen) for _ in range(-(-count // n))])[:count].numpy()
        start, stop, _ = self.rank_part(self.batch_size)
        for step in range(self.iters_per_epoch):
            ids = order[step * self.batch_size + start : step * self.batch_size + stop]
            yield self._masked(self.blocks["train"][ids], (self.seed * 1_000_003 + epoch) * 1_000_003 + step)

    def loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch).loss

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module) -> dict[str, float]:
        blocks = self.blocks["validation"]
        total_loss = correct = masked = 0.0
        for b in range(self.eval_batches):
            ids = np.arange(b * self.batch_size, (b + 1) * self.batch_size) % len(blocks)
            batch = self._masked(blocks[ids], 12345 + b)
            out = model(**batch)
            where = batch["labels"] != -100
            n = float(where.sum())
            total_loss += float(out.loss) * n
            correct += float((out.logits.argmax(-1)[where] == batch["labels"][where]).sum())
            masked += n
        return {
            "val/mlm_loss": total_loss / max(masked, 1.0),
            "val/mlm_accuracy": 100.0 * correct / max(masked, 1.0),
        }

    @property
    def data_source(self) -> dict[str, Any]:
        return dict(self._source)

    @staticmethod
    def fixture_overrides(tmp_path: Path) -> list[str]:
        """A tiny corpus as a datasets folder and the tiny model (BERT-B is too big for 2 CPU steps)."""
        folder = write_mlm_corpus(tmp_path / "corpus")
        return [
            f"task.data_dir={folder}",
            f"task.cache_dir={tmp_path / 'cache'}",
            "task.model=tiny",
            "task.vocab_size=200",
            "task.seq_len=32",
        ]


def write_mlm_corpus(folder: Path, rows: int = 200, seed: int = 0) -> Path:
    """A tiny Wikibooks-style corpus (one paragraph a row) saved with ``DatasetDict.save_to_disk``."""
    rng = np.random.default_rng(seed)
    syllables = "ka lo mi ten ra sun vel do re pin tor ash".split()
    words = ["".join(rng.choice(syllables, int(rng.integers(1, 4)))) for _ in range(300)]
    text = [" ".join(rng.choice(words, int(rng.integers(8, 30)))).capitalize() + "." for _ in range(rows)]
    cut = rows * 9 // 10
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": text[:cut]}),
            "validation": datasets.Dataset.from_dict({"text": text[cut:]}),
        }
    )
    dd.save_to_disk(str(folder))
    return folder


def write_pretrained_run(folder: Path) -> Path:
    """A tiny bert_mlm run folder as the runner leaves one (config.yaml, summary.json, checkpoint.pt)."""
    task = BertMLM(
        seed=0,
        data_dir=write_mlm_corpus(folder / "corpus"),
        cache_dir=folder / "cache",
        model="tiny",
        vocab_size=200,
        seq_len=32,
    )
    run = folder / "run"
    run.mkdir(parents=True, exist_ok=True)
    task_cfg = {"name": "bert_mlm", "model": "tiny", "vocab_size": 200, "seq_len": 32}
    (run / "config.yaml").write_text(json.dumps({"task": task_cfg}))  # JSON is YAML
    (run / "summary.json").write_text(json.dumps({"provenance": {"data_source": task.data_source}}))
    torch.save({"model": task.build_model().state_dict()}, run / "checkpoint.pt")
    return run
