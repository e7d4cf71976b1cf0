"""The process group of a multi-process run: one code path for torchrun and for SLURM tasks.

torchrun (``launcher=torchrun``, or ``torchrun -m runners.train ...`` by hand) exports ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``; a SLURM job with several tasks
started by submitit gets the same variables from ``submitit.helpers.TorchDistributedEnvironment``.
Either way the group is then joined through ``env://``: gloo on the CPU, nccl on the local rank's GPU.
A process with neither stays a single process with no group at all.

:func:`relaunch` is the ``launcher=torchrun`` half: it starts ``torch.distributed.run`` on the same
Hydra app with the same overrides, then maps the run's recorded status to this process's exit code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from runners.errors import ConfigError

STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class World:
    """This process's place in the run: rank, world size and the device it trains on."""

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: str = "ddp"

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes the run's store, checkpoints and W&B."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over ranks (in place; returned for chaining)."""
        if self.distributed:
            dist.all_reduce(values, op=dist.ReduceOp.SUM)
        return values

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def _from_slurm_tasks() -> bool:
    """Export torchrun's variables in a submitit SLURM job with several tasks; True if it did."""
    if os.environ.get("SUBMITIT_EXECUTOR") != "slurm" or int(os.environ.get("SLURM_NTASKS", "1")) < 2:
        return False
    from submitit.helpers import TorchDistributedEnvironment

    # every task sees the node's GPUs; each picks its local rank's below, as under torchrun
    TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    return True


def _rank_device(device: torch.device, local_rank: int, local_world_size: int) -> torch.device:
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if count >= local_world_size:
        return torch.device("cuda", local_rank)
    if count == 1:  # the scheduler bound one GPU to each task
        return torch.device("cuda", 0)
    raise ConfigError("launcher", f"{local_world_size} processes on this node but {count} CUDA devices")


def setup(device: torch.device, strategy: str = "ddp") -> World:
    """Join the process group the environment describes (once per process) and return this rank's
    :class:`World`; a plain process gets ``World(device)``."""
    if strategy not in STRATEGIES:
        raise ConfigError("distributed.strategy", f"must be one of {STRATEGIES}, got {strategy!r}")
    if "RANK" not in os.environ and not _from_slurm_tasks():
        return World(device, strategy=strategy)
    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size)))
    device = _rank_device(device, local_rank, local_world_size)
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("nccl", device_id=device)
        else:
            dist.init_process_group("gloo")
    return World(device, rank, world_size, local_rank, strategy)


def shard_model(model: torch.nn.Module, world: World) -> None:
    """FSDP: shard ``model``'s parameters over the ranks in place (before its optimizer is built)."""
    if world.distributed and world.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        fully_shard(model)


def training_module(model: torch.nn.Module, world: World) -> torch.nn.Module:
    """The module the loss runs through: DDP's wrapper (it all-reduces the gradients in backward),
    else ``model`` itself (FSDP shards it in place; one process has nothing to reduce)."""
    if not world.distributed or world.strategy == "fsdp":
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [world.device.index] if world.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def states(model: torch.nn.Module, opt: torch.optim.Optimizer, world: World) -> tuple[dict, dict]:
    """Full (unsharded, unwrapped) model and optimizer state dicts; under FSDP a collective whose
    result only rank 0 keeps. The model's keys are those of a one-process run, which can load it.

    The optimizer's own ``state_dict()`` (any layout: Mechanic nests its base's) with every DTensor in it
    gathered whole, so that one rule serves every optimizer."""
    if world.strategy != "fsdp" or not world.distributed:
        return model.state_dict(), opt.state_dict()
    from torch.distributed.checkpoint import state_dict as dcp

    options = dcp.StateDictOptions(full_state_dict=True, cpu_offload=True)
    return dcp.get_model_state_dict(model, options=options), _gathered(opt.state_dict())


def _gathered(value: Any) -> Any:
    """``value`` with each DTensor replaced by its full tensor on the CPU (every rank, same order)."""
    if isinstance(value, DTensor):
        return value.full_tensor().cpu()
    if isinstance(value, dict):
        return {k: _gathered(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_gathered(v) for v in value)
    return value


def load_states(
    model: torch.nn.Module, opt: torch.optim.Optimizer, model_state: dict, opt_state: dict, world: World
) -> None:
    """Load full state dicts (every rank reads the same checkpoint); FSDP keeps its rank's shards: each
    optimizer state tensor shaped as its parameter is sharded as that parameter is."""
    if world.strategy != "fsdp" or not world.distributed:
        model.load_state_dict(model_state)
        opt.load_state_dict(opt_state)
        return
    from torch.distributed.checkpoint import state_dict as dcp
    from torch.distributed.tensor import distribute_tensor

    dcp.set_model_state_dict(model, model_state, options=dcp.StateDictOptions(full_state_dict=True))
    opt.load_state_dict(opt_state)
    wrapped = [o for o in vars(opt).values() if isinstance(o, torch.optim.Optimizer)]  # Mechanic's base
    for o in (opt, *wrapped):
        for p, st in o.state.items():
            if not isinstance(p, DTensor) or not isinstance(st, dict):
                continue
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and not isinstance(v, DTensor) and v.shape == p.shape:
                    st[k] = distribute_tensor(v.to(p.device), p.device_mesh, p.placements)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def relaunch(nproc_per_node: int, device: torch.device, overrides: Sequence[str]) -> int:
    """Run ``python -m runners.train <overrides>`` on ``nproc_per_node`` processes through torchrun
    (standalone: one node, a free port) and wait for it; its exit code.

    SIGTERM/SIGUSR1/SIGINT sent to this process are passed on to torchrun, which hands them to every
    worker (``--signals-to-handle``); the workers then checkpoint and stop together.
    """
    if not isinstance(nproc_per_node, int) or nproc_per_node < 1:
        raise ConfigError("launcher.nproc_per_node", f"must be an integer >= 1, got {nproc_per_node!r}")
    if device.type == "cuda" and nproc_per_node > torch.cuda.device_count():
        raise ConfigError(
            "launcher.nproc_per_node",
            f"{nproc_per_node} processes but {torch.cuda.device_count()} CUDA devices on this node",
        )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc_per_node}",
        "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1",
        "-m",
        "runners.train",
        *overrides,
    ]
    proc = subprocess.Popen(command)
    forwarded = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
    old = {sig: signal.signal(sig, lambda signum, _frame: proc.send_signal(signum)) for sig in forwarded}
    try:
        return proc.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
