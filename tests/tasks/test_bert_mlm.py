"""tasks/bert_mlm.py on a tiny corpus written here as a datasets folder and as text files."""

from __future__ import annotations

import pytest
import torch

from tasks.base import DatasetMissingError
from tasks.bert_mlm import BertMLM, write_mlm_corpus


def make(tmp_path, **kw):
    args = {
        "seed": 0,
        "data_dir": tmp_path / "corpus",
        "cache_dir": tmp_path / "cache",
        "model": "tiny",
        "vocab_size": 200,
        "seq_len": 32,
        "batch_size": 8,
        "iters_per_epoch": 2,
        "eval_batches": 2,
        **kw,
    }
    return BertMLM(**args)


@pytest.fixture
def corpus(tmp_path):
    return write_mlm_corpus(tmp_path / "corpus")


def test_packed_blocks_and_roberta_masking(tmp_path, corpus):
    task = make(tmp_path)
    tok = task.tokenizer
    blocks = task.blocks["train"]
    assert blocks.shape[1] == 32
    assert (blocks[:, 0] == tok.cls_token_id).all() and (blocks[:, -1] == tok.sep_token_id).all()
    batch = next(iter(task.train_batches(0)))
    masked = batch["labels"] != -100
    assert 0.05 < masked.float().mean().item() < 0.3  # 15% of the tokens
    # a masked position holds [MASK], a random token or the original; an unmasked one is untouched
    assert (batch["input_ids"][masked] == tok.mask_token_id).float().mean() > 0.5
    again = next(iter(task.train_batches(0)))
    assert torch.equal(batch["input_ids"], again["input_ids"]) and torch.equal(
        batch["labels"], again["labels"]
    )
    assert task.data_source["tokenizer"]["kind"] == "trained_wordpiece"
    assert all(len(f["sha256"]) == 64 for f in task.data_source["files"])


def test_bert_configs_and_metrics(tmp_path, corpus):
    task = make(tmp_path)
    torch.manual_seed(0)
    model = task.build_model()
    assert not hasattr(model, "cls") or not hasattr(model.cls, "seq_relationship")  # no NSP head
    loss = task.loss(model, next(iter(task.train_batches(0))))
    assert abs(loss.item() - torch.log(torch.tensor(200.0)).item()) < 0.7
    metrics = task.evaluate(model)
    assert set(metrics) == {"val/mlm_loss", "val/mlm_accuracy"} and 0 <= metrics["val/mlm_accuracy"] <= 100
    base = make(tmp_path, model="bert-base", vocab_size=200, seq_len=32).config
    assert (base.hidden_size, base.num_hidden_layers, base.num_attention_heads) == (768, 12, 12)


def test_text_files_layout(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    lines = [f"line {i} of a small book about rivers and kings" for i in range(300)]
    (folder / "train.txt").write_text("\n".join(lines[:270]))
    (folder / "validation.txt").write_text("\n".join(lines[270:]))
    task = make(tmp_path, vocab_size=100)
    assert len(task.blocks["validation"]) > 0


def test_bad_inputs(tmp_path, corpus):
    with pytest.raises(DatasetMissingError, match="nowhere"):
        make(tmp_path, data_dir=tmp_path / "nowhere")
    with pytest.raises(DatasetMissingError, match="vocab.txt"):
        make(tmp_path, tokenizer=str(tmp_path))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "ka", "lo"]))
    with pytest.raises(ValueError, match=r"7 tokens.*vocab_size=200"):
        make(tmp_path, tokenizer=str(vocab))
    with pytest.raises(ValueError, match="shorter than one block"):
        make(tmp_path, seq_len=100_000)
