"""Experiment trackers: ``logger=wandb`` (online with an API key, offline without) or ``logger=none``.

The W&B run id is kept in ``<run_dir>/wandb_id.txt`` so that a resumed run continues the same W&B run;
offline files go to ``<run_dir>/wandb/``.
"""

from __future__ import annotations

import netrc
import os
import secrets
import string
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from runners.store import atomic_write_text

_SAID_OFFLINE = False


class NoLogger:
    """``logger=none``: logs nothing."""

    mode = "none"
    run_id: str | None = None

    def log(self, metrics: dict[str, float], step: int) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


def has_api_key() -> bool:
    """True when W&B finds credentials: ``WANDB_API_KEY``, an identity token, or a netrc entry."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _new_id() -> str:
    """A fresh W&B-style run id (8 lowercase alphanumerics)."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


class WandbLogger:
    """``logger=wandb``: one W&B run per lrbench run, resumed with the id stored in the run dir."""

    def __init__(self, cfg: dict[str, Any], run_dir: Path, *, name: str, group: str, tags: list[str]) -> None:
        global _SAID_OFFLINE
        import wandb

        mode = cfg.get("mode") or os.environ.get("WANDB_MODE") or None
        if mode is None:
            mode = "online" if has_api_key() else "offline"
            if mode == "offline":
                os.environ["WANDB_MODE"] = "offline"
                if not _SAID_OFFLINE:
                    print(
                        f"wandb: no API key found, logging offline under {run_dir / 'wandb'} "
                        "(upload later with `wandb sync`)",
                        file=sys.stderr,
                    )
                    _SAID_OFFLINE = True
        id_file = run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else _new_id()
        atomic_write_text(id_file, run_id + "\n")
        self.mode, self.run_id = mode, run_id
        self._run = wandb.init(
            project=cfg.get("project"),
            entity=cfg.get("entity"),
            group=cfg.get("group") or group,
            tags=[*tags, *(cfg.get("tags") or [])],
            name=name,
            id=run_id,
            resume="allow",
            reinit="create_new",  # a batched group holds one W&B run per member at once
            dir=str(run_dir),
            mode=mode,
            config=cfg.get("_run_config"),
            settings=wandb.Settings(console="off", silent=True),
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self._run.log(metrics, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        self._run.summary.update(values)

    def finish(self, exit_code: int = 0) -> None:
        self._run.finish(exit_code=exit_code)


def make_logger(
    cfg: dict[str, Any], run_dir: Path, *, run_config: dict[str, Any], name: str, group: str, tags: list[str]
) -> NoLogger | WandbLogger:
    """The tracker that ``cfg["name"]`` selects (``wandb`` or ``none``)."""
    if cfg["name"] == "none":
        return NoLogger()
    if cfg["name"] == "wandb":
        return WandbLogger({**cfg, "_run_config": run_config}, run_dir, name=name, group=group, tags=tags)
    raise ValueError(f"name must be one of ('wandb', 'none'), got {cfg['name']!r}")
