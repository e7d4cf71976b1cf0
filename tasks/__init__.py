"""lrbench tasks: each module registers one :class:`tasks.base.Task` subclass."""

import importlib
import pkgutil

from tasks.base import TASKS, DatasetMissingError, Task, register_task


def load_all() -> None:
    """Import every task module so that it registers itself."""
    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_") and mod.name != "base":
            importlib.import_module(f"{__name__}.{mod.name}")


__all__ = ["TASKS", "DatasetMissingError", "Task", "load_all", "register_task"]
