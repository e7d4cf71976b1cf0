"""The batched sweeper composes each job once before the launcher does: a group pack made, not again."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from hydra.core.plugins import Plugins


class _CountingLoader:
    def __init__(self) -> None:
        self.composed: list[list[str]] = []

    def load_sweep_config(self, master_config: Any, sweep_overrides: list[str]) -> None:
        self.composed.append(list(sweep_overrides))


def _sweeper_class() -> type:
    """The class Hydra instantiates. Hydra's first plugin scan in a process runs the plugin modules again
    (Hydra's own BasicSweeper's among them), so a class imported before it (at collection time) would
    subclass a BasicSweeper that no longer is the module's."""
    Plugins.instance()
    from hydra_plugins.lrbench_batched import batched_sweeper

    return batched_sweeper.BatchedSweeper


def test_validation_skips_only_the_groups_pack_made() -> None:
    sweeper = _sweeper_class()(max_batch_size=None)
    loader = _CountingLoader()
    sweeper.hydra_context = SimpleNamespace(config_loader=loader)
    sweeper.config = object()
    group = ("task=toy", "members={keys:['seed'],values:[[0],[1]]}")
    written = ("task=toy", "seed=5")  # a job the user wrote, never composed by pack
    sweeper.packed_groups = frozenset({group})
    sweeper.validate_batch_is_legal([list(group), list(written)])
    assert loader.composed == [list(written)]
