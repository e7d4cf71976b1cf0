"""Bad input as one line: ``error: <key>: <message>`` on stderr, exit code 2.

The runner knows which config group was being built when a ValueError/TypeError was raised
(``task``, ``optimizer``, ``schedule``, ...). The key inside the group is the argument the message
names, else the argument whose value the message quotes (torch's own optimizers name neither
consistently, e.g. ``Invalid learning rate: -1.0``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

EXIT_BAD_INPUT = 2


class ConfigError(Exception):
    """An invalid config value, raised with the dotted key it belongs to."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def _flat(cfg: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def guess_key(group: str, cfg: Mapping[str, Any], message: str) -> str:
    """The dotted key of ``cfg`` (the config of ``group``) that ``message`` is most likely about."""
    flat = {k: v for k, v in _flat(cfg).items() if k != "name"}
    for key in sorted(flat, key=len, reverse=True):
        leaf = key.rsplit(".", 1)[-1]
        if re.search(rf"(?<![\w.]){re.escape(key)}(?!\w)", message) or re.search(
            rf"(?<![\w.]){re.escape(leaf)}(?!\w)", message
        ):
            return f"{group}.{key}"
    for key, value in flat.items():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int | float) and re.search(
            rf"(?<![\w.]){re.escape(repr(value))}(?![\w.])", message
        ):
            return f"{group}.{key}"
        if isinstance(value, int | float) and re.search(
            rf"(?<![\w.]){re.escape(repr(float(value)))}(?![\w])", message
        ):
            return f"{group}.{key}"
    return group


def as_config_error(group: str, cfg: Mapping[str, Any], exc: Exception) -> ConfigError:
    """Wrap ``exc`` (raised while building ``group``) as a :class:`ConfigError` naming its key."""
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ConfigError(guess_key(group, cfg, message), message)
