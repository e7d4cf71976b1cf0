"""logger=wandb without an API key: offline run under the run dir, read back from its transaction log.

The reader is the approach of ../shared/recipes/wandb_offline_reader.py (LevelDB-style log of
wandb.proto Records), copied here so the test has no runtime dependency on ../shared.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

from runners import store
from tests.runners.helpers import cli_run

BLOCK, HDR = 32 * 1024, 7


def iter_records(path: Path):
    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:HDR])
    assert ident == b":W&B" and magic == 0xBEE1
    pos, buf = HDR, b""
    while pos + HDR <= len(data):
        left = BLOCK - (pos % BLOCK)
        if left < HDR:
            pos += left
            continue
        _crc, length, rtype = struct.unpack("<IHB", data[pos : pos + HDR])
        if rtype == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + HDR : pos + HDR + length]
        pos += HDR + length
        if rtype == 2:
            buf = chunk
            continue
        if rtype == 3:
            buf += chunk
            continue
        payload = chunk if rtype == 1 else buf + chunk
        buf = b""
        rec = pb.Record()
        rec.ParseFromString(payload)
        yield rec


def read_run(path: Path) -> dict[str, Any]:
    def key(item):
        return item.key or "/".join(item.nested_key)

    config, history, summary, run_id = {}, [], {}, None
    for rec in iter_records(path):
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run_id = rec.run.run_id
            config["_group"], config["_tags"] = rec.run.run_group, list(rec.run.tags)
            config.update({key(it): json.loads(it.value_json) for it in rec.run.config.update})
        elif kind == "config":
            config.update({key(it): json.loads(it.value_json) for it in rec.config.update})
        elif kind == "history":
            history.append({key(it): json.loads(it.value_json) for it in rec.history.item})
        elif kind == "summary":
            summary.update({key(it): json.loads(it.value_json) for it in rec.summary.update})
    return {"run_id": run_id, "config": config, "history": history, "summary": summary}


def test_offline_wandb_run_reads_back_and_resumes_same_id(tmp_path):
    env = {"HOME": str(tmp_path), "WANDB_API_KEY": None, "WANDB_MODE": None, "NETRC": str(tmp_path / "none")}
    args = (
        "logger=wandb",
        "logger.project=lrbench-test",
        "optimizer=adam",
        "max_steps=20",
        "log_every_steps=5",
    )
    code, out, err = cli_run(tmp_path, *args, env=env)
    assert code == 0, err
    assert err.count("wandb: no API key found, logging offline") == 1
    run_dir = next((tmp_path / "results" / "runs" / "adhoc").iterdir())
    wandb_id = (run_dir / "wandb_id.txt").read_text().strip()
    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    r = read_run(files[0])
    assert r["run_id"] == wandb_id
    assert r["config"]["optimizer"]["lr"] == 0.001 and r["config"]["seed"] == 0
    assert r["config"]["_group"] == "adhoc"
    assert r["config"]["_tags"] == ["task:toy", "optimizer:adam", "seed:0"]
    records = store.read_metrics(run_dir / "metrics.jsonl")
    expected = [(x["step"], x["value"]) for x in records if x["split"] == "batch"]
    logged = [(h["_step"], h["batch/loss"]) for h in r["history"] if "batch/loss" in h]
    assert logged == expected and len(logged) == 4
    accuracy = [x["value"] for x in records if x["name"] == "accuracy"]
    assert [h["train/accuracy"] for h in r["history"] if "train/accuracy" in h] == accuracy
    assert r["summary"]["status"] == "completed"
    assert r["summary"]["final/train/accuracy"] == accuracy[-1]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["wandb"] == {"mode": "offline", "id": wandb_id}

    # an unfinished run (no summary) restarts from its checkpoint and continues the same W&B run
    (run_dir / "summary.json").unlink()
    code, out, err = cli_run(tmp_path, *args, env=env)
    assert code == 0 and "resuming from step 20" in out, err
    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 2 and read_run(files[1])["run_id"] == wandb_id
