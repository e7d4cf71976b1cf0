"""lrbench tasks: each module registers one :class:`tasks.base.Task` subclass."""

import importlib
import importlib.util
import pkgutil

from tasks.base import TASKS, DatasetMissingError, Task, register_task


def load_all() -> None:
    """Import every task module so that it registers itself."""
    for mod in pkgutil.iter_modules(__path__):
        if not mod.name.startswith("_") and mod.name != "base":
            importlib.import_module(f"{__name__}.{mod.name}")


def task_class(name: str) -> type[Task] | None:
    """The task registered as ``name``, None if there is none. Imports only ``tasks/<name>.py`` (a task's
    module is named after it) unless no such module registers it: importing every task pulls in
    transformers and torchvision, seconds that a LIBSVM run would pay for nothing."""
    if name not in TASKS and isinstance(name, str) and name.isidentifier() and not name.startswith("_"):
        if importlib.util.find_spec(f"{__name__}.{name}") is not None:
            importlib.import_module(f"{__name__}.{name}")
    if name not in TASKS:
        load_all()
    return TASKS.get(name)


__all__ = ["TASKS", "DatasetMissingError", "Task", "load_all", "register_task", "task_class"]
