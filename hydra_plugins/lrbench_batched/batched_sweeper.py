"""``hydra/sweeper=lrbench_batched`` (the default of configs/train.yaml): Hydra's basic sweeper, whose
jobs are first packed into batched groups where the runs allow it (runners/batched.py:pack). Every
launcher (basic, joblib, submitit_slurm) then runs a group as one job."""

from collections.abc import Sequence
from dataclasses import dataclass

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore


@dataclass
class BatchedSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.lrbench_batched.batched_sweeper.BatchedSweeper"


ConfigStore.instance().store(
    group="hydra/sweeper", name="lrbench_batched", node=BatchedSweeperConf, provider="lrbench"
)


class BatchedSweeper(BasicSweeper):
    packed_groups: frozenset[tuple[str, ...]] = frozenset()

    def get_job_batch(self) -> Sequence[Sequence[str]]:
        from runners.batched import pack

        jobs = super().get_job_batch()
        loader = self.hydra_context.config_loader
        packed, notes = pack(jobs, lambda overrides: loader.load_sweep_config(self.config, list(overrides)))
        for note in notes:
            print(note, flush=True)
        self.packed_groups = frozenset(tuple(job) for job in packed) - {tuple(job) for job in jobs}
        return packed

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Hydra's early check that every job composes, less the groups ``pack`` made: it composed their
        first run already, and a compose (a quarter of a second) per group is a Table 1 process's
        largest fixed cost after its imports."""
        super().validate_batch_is_legal([job for job in batch if tuple(job) not in self.packed_groups])
