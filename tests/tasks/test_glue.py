"""tasks/glue.py on GLUE TSVs written here and a tiny bert_mlm run folder in the runner's layout."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import BertForSequenceClassification

from tasks.base import DatasetMissingError
from tasks.bert_mlm import write_pretrained_run
from tasks.glue import Glue, write_glue_tsvs


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("glue")
    return write_pretrained_run(root / "pretrain"), write_glue_tsvs(root / "glue")


def make(files, **kw):
    run, glue = files
    return Glue(seed=0, data_dir=glue, checkpoint=run, max_length=32, batch_size=8, **kw)


def test_mnli_starts_from_the_pretrained_encoder(files):
    task = make(files, dataset="mnli")
    model = task.build_model()
    state = torch.load(files[0] / "checkpoint.pt", weights_only=False)["model"]
    key = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(model.state_dict()[key], state[key])
    assert model.config.num_labels == 3
    batch = next(iter(task.train_batches(0)))
    assert task.loss(model, batch).isfinite()
    metrics = task.evaluate(model)
    assert set(metrics) == {"validation_matched/accuracy", "validation_mismatched/accuracy"}


def test_qqp_reports_f1_and_dropout_is_a_task_key(files):
    task = make(files, dataset="qqp", dropout=0.0)
    assert task.config.hidden_dropout_prob == 0.0 and task.config.attention_probs_dropout_prob == 0.1
    assert set(task.evaluate(task.build_model())) == {"validation/accuracy", "validation/f1"}


def test_unexpected_columns_are_named(files):
    run, glue = files
    path = glue / "sst2" / "train.tsv"
    text = path.read_text().splitlines()
    bad = glue.parent / "bad"
    (bad / "sst2").mkdir(parents=True)
    (bad / "sst2" / "validation.tsv").write_text((glue / "sst2" / "validation.tsv").read_text())
    (bad / "sst2" / "train.tsv").write_text("\n".join([text[0] + "\tgenre"] + [r + "\tx" for r in text[1:]]))
    with pytest.raises(ValueError, match=r"unexpected columns \['genre'\]"):
        Glue(seed=0, dataset="sst2", data_dir=bad, checkpoint=run, max_length=32)


def test_missing_files_name_the_path(files, tmp_path):
    run, glue = files
    with pytest.raises(DatasetMissingError, match="qnli"):
        Glue(seed=0, dataset="qnli", data_dir=tmp_path, checkpoint=run)
    with pytest.raises(DatasetMissingError, match="checkpoint.pt"):
        Glue(seed=0, dataset="sst2", data_dir=glue, checkpoint=tmp_path)


def test_a_checkpoint_is_required(files):
    with pytest.raises(ValueError, match="task.checkpoint is required"):
        Glue(seed=0, dataset="sst2", data_dir=files[1])


def test_fine_tunes_from_a_bert_mlm_run_of_the_runner(tmp_path):
    """Pre-train a tiny BERT with the runner, then fine-tune SST-2 from that run folder with the runner."""
    from tasks.bert_mlm import BertMLM
    from tests.runners.helpers import run_inproc

    pre = BertMLM.fixture_overrides(tmp_path / "corpus")
    common = ("scale=smoke", "optimizer=adamw", "torch_threads=1", "keep_checkpoint=true")
    code, run = run_inproc(tmp_path / "results", "task=bert_mlm", *common, *pre)
    assert code == 0 and (run / "checkpoint.pt").is_file()
    trained = torch.load(run / "checkpoint.pt", weights_only=False)["model"]

    glue = write_glue_tsvs(tmp_path / "glue")
    task = Glue(seed=0, dataset="sst2", data_dir=glue, checkpoint=run, max_length=32, batch_size=8)
    state = task.build_model().state_dict()
    encoder = [k for k in state if k.startswith("bert.") and not k.startswith("bert.pooler.")]
    assert encoder and all(torch.equal(state[k], trained[k]) for k in encoder)
    torch.manual_seed(0)
    fresh = BertForSequenceClassification(task.config).state_dict()
    assert not torch.equal(fresh[encoder[0]], trained[encoder[0]])  # the runner's steps moved the weights
    assert "classifier.weight" in state and "classifier.weight" not in trained  # the head is new
    by_file = Glue(seed=0, dataset="sst2", data_dir=glue, checkpoint=run / "checkpoint.pt", max_length=32)
    assert by_file.data_source["checkpoint"] == str(run / "checkpoint.pt")

    args = ("task=glue", "task.dataset=sst2", f"task.data_dir={glue}", f"task.checkpoint={run}")
    code, tuned = run_inproc(tmp_path / "results", *args, "task.max_length=32", *common)
    assert code == 0
    summary = json.loads((tuned / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert summary["provenance"]["data_source"]["checkpoint"] == str(run / "checkpoint.pt")
    assert "validation/accuracy" in summary["final"]


def test_a_missing_pretraining_run_is_one_line(tmp_path, capsys):
    from tests.runners.helpers import run_inproc

    missing = tmp_path / "no_such_run"
    glue = write_glue_tsvs(tmp_path / "glue")
    args = ("task=glue", "task.dataset=sst2", f"task.data_dir={glue}", f"task.checkpoint={missing}")
    code, _ = run_inproc(tmp_path / "results", *args, "scale=smoke")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(missing / "config.yaml") in err[0], err
