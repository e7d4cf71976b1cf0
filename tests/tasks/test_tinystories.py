"""tasks/tinystories.py on tiny TinyStories-style shards and datasets folders written here."""

from __future__ import annotations

import json

import datasets
import pytest
import torch

from tasks._pretok import write_story_shards
from tasks.base import DatasetMissingError
from tasks.tinystories import TinyStories, llama2c_hidden_dim

TINY = {"dim": 16, "n_layers": 1, "n_heads": 2, "seq_len": 16, "batch_size": 4, "iters_per_epoch": 3}


def make(tmp_path, **kw):
    args = {
        "seed": 0,
        "data_dir": tmp_path / "shards",
        "cache_dir": tmp_path / "cache",
        "vocab_size": 300,
        "eval_batches": 2,
        **TINY,
    }
    args.update(kw)
    return TinyStories(**args)


@pytest.fixture
def shards(tmp_path):
    return write_story_shards(tmp_path / "shards")


def test_llama2c_15m_parameter_count(tmp_path, shards):
    """llama2.c's model.py counts 15,191,712 parameters for dim 288 / 6 layers / 32000 vocab (tied)."""
    task = make(tmp_path, dim=288, n_layers=6, n_heads=6, seq_len=256)
    assert llama2c_hidden_dim(288, 32) == 768
    task.config.vocab_size = 32000
    model = task.build_model()
    assert sum(p.numel() for p in model.parameters()) == 15_191_712
    assert model.config._attn_implementation == "sdpa"
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_trained_bpe_is_cached_and_recorded(tmp_path, shards):
    first = make(tmp_path)
    src = first.data_source
    assert src["tokenizer"] == {"kind": "trained_bpe", "vocab_size": 300}
    assert [f["path"] for f in src["files"]] == [str(shards / "data00.json"), str(shards / "data01.json")]
    assert all(len(f["sha256"]) == 64 for f in src["files"])
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.bin")}
    second = make(tmp_path, seed=1)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache").rglob("*.bin")} == mtimes
    assert second.data_source["tokens"] == src["tokens"]
    # every story starts with <s>; the val split is shard 0 (llama2.c)
    bos = first.data.tokenizer.token_to_id("<s>")
    val = first.data.tokens["val"]
    assert val[0] == bos and (val == bos).sum() == 40


def test_batches_are_shifted_windows_and_a_function_of_seed_and_epoch(tmp_path, shards):
    task = make(tmp_path)
    batches = list(task.train_batches(0))
    assert len(batches) == task.steps_per_epoch == 3
    x, y = batches[0]
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    again = list(task.train_batches(0))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again, strict=True))
    assert not torch.equal(
        torch.cat([b[0] for b in task.train_batches(1)]), torch.cat([b[0] for b in batches])
    )


def test_loss_at_init_is_about_log_vocab_and_evaluate_names_splits(tmp_path, shards):
    task = make(tmp_path)
    torch.manual_seed(0)
    model = task.build_model()
    loss = task.loss(model, next(iter(task.train_batches(0))))
    assert abs(loss.item() - torch.log(torch.tensor(300.0)).item()) < 0.5
    metrics = task.evaluate(model)
    assert set(metrics) == {"train/loss", "val/loss"}


def test_datasets_folder_layout(tmp_path):
    rows = [{"text": f"Once upon a time {i} cats sat on {i + 1} mats. The end."} for i in range(60)]
    dd = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:50]), "validation": datasets.Dataset.from_list(rows[50:])}
    )
    dd.save_to_disk(str(tmp_path / "hf"))
    task = make(tmp_path, data_dir=tmp_path / "hf")
    assert task.data_source["kind"] == "pretokenised hf_disk"
    assert task.data_source["tokens"]["val"] > 0


def test_substitute_label_is_carried_into_the_data_source(tmp_path, shards):
    label = {"name": "King James Bible", "substitute_for": "TinyStories"}
    (shards / "source.json").write_text(json.dumps(label))
    assert make(tmp_path).data_source["corpus"] == label


def test_missing_corpus_and_tokenizer_name_the_path(tmp_path, shards):
    with pytest.raises(DatasetMissingError, match=str(tmp_path / "nope")):
        make(tmp_path, data_dir=tmp_path / "nope")
    with pytest.raises(DatasetMissingError, match="tok.json"):
        make(tmp_path, tokenizer=str(tmp_path / "tok.json"))


def test_tokenizer_with_another_vocabulary_is_refused_with_both_sizes(tmp_path, shards):
    task = make(tmp_path)
    path = tmp_path / "tokenizer.json"
    task.data.tokenizer.save(str(path))
    assert make(tmp_path, tokenizer=str(path)).data_source["tokenizer"]["kind"] == "file"
    with pytest.raises(ValueError, match=r"300 tokens.*vocab_size=512"):
        make(tmp_path, tokenizer=str(path), vocab_size=512)


def test_corpus_shorter_than_one_block_is_refused(tmp_path, shards):
    with pytest.raises(ValueError, match="fewer than one block"):
        make(tmp_path, seq_len=100_000)


def test_corrupt_shard_names_the_file(tmp_path, shards):
    (shards / "data01.json").write_text('[{"text": "no story field"}]')
    with pytest.raises(ValueError, match="data01.json"):
        make(tmp_path)


def test_gpt2_architecture_for_d7(tmp_path, shards):
    task = make(tmp_path, arch="gpt2", dropout=0.1)
    model = task.build_model()
    assert type(model).__name__ == "GPT2LMHeadModel" and model.config.n_inner == 4 * 16
    assert model.config._attn_implementation == "sdpa"
    assert task.loss(model, next(iter(task.train_batches(0)))).isfinite()


def train_sentencepiece(shards, folder, vocab_size=400):
    """A real SentencePiece ``tokenizer.model`` with llama2.c's train_vocab.py options, on the train shard."""
    import sentencepiece as spm

    texts = [row["story"] for row in json.loads((shards / "data01.json").read_text())]
    folder.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_prefix=str(folder / "tokenizer"),
        model_type="bpe",
        vocab_size=vocab_size,
        self_test_sample_size=0,
        character_coverage=1.0,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        byte_fallback=True,
        unk_surface=r" \342\201\207 ",
        normalization_rule_name="identity",
        minloglevel=2,
    )
    return folder / "tokenizer.model", spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))


def test_sentencepiece_model_tokenises_as_sentencepiece_does(tmp_path, shards):
    model, sp = train_sentencepiece(shards, tmp_path / "sp")
    task = make(tmp_path, tokenizer=str(model), vocab_size=400)
    src = task.data_source["tokenizer"]
    assert src["kind"] == "sentencepiece" and src["path"] == str(model)
    val = [row["story"] for row in json.loads((shards / "data00.json").read_text())]
    expected = [i for story in val for i in (sp.bos_id(), *sp.encode(story))]  # llama2.c: bos=True, eos=False
    assert task.data.tokens["val"].tolist() == expected
    text = "Héllo  wörld 1234 ✓"  # byte fallback, repeated spaces, split digits
    assert task.data.tokenizer.encode(text, add_special_tokens=False).ids == sp.encode(text)
    assert make(tmp_path, tokenizer=str(model.parent), vocab_size=400).data_source["tokenizer"] == src


def test_sentencepiece_model_with_another_vocabulary_is_refused_with_both_sizes(tmp_path, shards):
    model, _ = train_sentencepiece(shards, tmp_path / "sp")
    with pytest.raises(ValueError, match=r"400 tokens.*vocab_size=32000"):
        make(tmp_path, tokenizer=str(model), vocab_size=32000)
    bad = tmp_path / "bad" / "tokenizer.model"
    bad.parent.mkdir()
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        make(tmp_path, tokenizer=str(bad), vocab_size=400)


def test_smoke_run_with_a_sentencepiece_model(tmp_path, shards):
    from tests.runners.helpers import run_inproc

    model, _ = train_sentencepiece(shards, tmp_path / "sp")
    overrides = TinyStories.fixture_overrides(tmp_path / "fixture")
    tok = (
        f"task.tokenizer={model}",
        "task.vocab_size=400",
        "task.dim=16",
        "task.n_heads=2",
        "task.n_layers=1",
    )
    code, run = run_inproc(tmp_path / "results", "task=tinystories", "scale=smoke", *overrides, *tok)
    assert code == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert summary["provenance"]["data_source"]["tokenizer"]["kind"] == "sentencepiece"
