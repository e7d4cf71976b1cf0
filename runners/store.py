"""The results store: ``<results_dir>/runs/<group>/<run_id>/`` with config, metrics, summary, checkpoint.

Every file but the append-only ``metrics.jsonl`` is written atomically (temp file + ``os.replace``);
``metrics.jsonl`` is cut back to the record count stored in the checkpoint when a run resumes, so a
torn last line or records written after the checkpoint never survive.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import IO, Any

import torch
import yaml

#: top-level config keys that do not change what is computed, so they stay out of the run id hash
NON_RESULT_KEYS = (
    "logger",
    "launcher",
    "hydra",
    "results_dir",
    "group",
    "progress",
    "ckpt_every_steps",
    "ckpt_every_minutes",
    "keep_checkpoint",
    "torch_threads",
    "sweep",
    "distributed",
    "batch_runs",
    "members",
)
REPO = Path(__file__).resolve().parents[1]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def config_hash(cfg: dict[str, Any]) -> str:
    """Short hash of the resolved config without the keys in :data:`NON_RESULT_KEYS`."""
    kept = {k: v for k, v in cfg.items() if k not in NON_RESULT_KEYS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:10]


def run_id(cfg: dict[str, Any]) -> str:
    """``<task>[-<dataset>]-<optimizer>-s<seed>-<hash>``: the same command always maps to the same id."""
    parts = [str(cfg["task"]["name"])]
    if cfg["task"].get("dataset") is not None:
        parts.append(str(cfg["task"]["dataset"]))
    parts += [str(cfg["optimizer"]["name"]), f"s{cfg['seed']}", config_hash(cfg)]
    return "-".join(p.replace("/", "_").replace(" ", "_") for p in parts)


class MetricsWriter:
    """Appends ``{"step","epoch","split","name","value"}`` records to ``metrics.jsonl``.

    With ``path=None`` (a rank other than 0) it writes nothing and only counts.
    """

    def __init__(self, path: Path | None, keep: int = 0) -> None:
        self.path = path
        self.count = keep
        self._f: IO[str] | None = None
        if path is not None:
            truncate_records(path, keep)
            self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def write(self, step: int, epoch: float, split: str, name: str, value: float) -> None:
        if self._f is not None:
            rec = {"step": step, "epoch": epoch, "split": split, "name": name, "value": value}
            self._f.write(json.dumps(rec) + "\n")
        self.count += 1

    def write_dict(self, step: int, epoch: float, metrics: dict[str, float]) -> None:
        """Write ``{"<split>/<name>": value}`` as one record per entry."""
        for key, value in metrics.items():
            split, _, name = key.partition("/")
            self.write(step, epoch, split, name, value)

    def sync(self) -> None:
        """Flush to disk (before a checkpoint records :attr:`count`)."""
        if self._f is not None:
            self._f.flush()
            os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None and not self._f.closed:
            self.sync()
            self._f.close()


def truncate_records(path: Path, keep: int) -> None:
    """Keep the first ``keep`` complete lines of ``path`` (atomically); create it if missing."""
    lines: list[str] = []
    if path.exists() and keep > 0:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if len(lines) == keep or not line.endswith("\n"):
                    break
                lines.append(line)
        if len(lines) < keep:
            raise RuntimeError(f"{path} holds {len(lines)} complete records, the checkpoint expects {keep}")
    atomic_write_text(path, "".join(lines))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def read_config(run_dir: Path) -> dict[str, Any]:
    """A run's ``config.yaml`` ({} when it has none), through libyaml's C parser where PyYAML has it: a
    report reads hundreds of them, and the pure-Python parser is most of its time."""
    path = run_dir / "config.yaml"
    if not path.exists():
        return {}
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) or {}


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(device: torch.device, data_source: dict[str, Any]) -> dict[str, Any]:
    """Code, library, machine and data versions of a run."""
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_sha": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "hostname": platform.node(),
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        "data_source": data_source,
    }
