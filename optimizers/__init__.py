"""lrbench's optimizer library: one module per optimizer, each registered in ``registry``.

Importing the package imports every module, so every optimizer is registered and exported.
"""

import importlib
import pkgutil

from optimizers.registry import OPTIMIZERS, SHARDABLE, NotShardableError, batch_keys, build, register

for _mod in pkgutil.iter_modules(__path__):
    if not _mod.name.startswith("_") and _mod.name != "registry":
        importlib.import_module(f"{__name__}.{_mod.name}")

globals().update({cls.__name__: cls for cls in OPTIMIZERS.values() if isinstance(cls, type)})

__all__ = [
    "OPTIMIZERS",
    "SHARDABLE",
    "NotShardableError",
    "batch_keys",
    "build",
    "register",
    *sorted({c.__name__ for c in OPTIMIZERS.values()}),
]
