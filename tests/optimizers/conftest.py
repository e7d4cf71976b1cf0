"""Fixtures shared by the optimizer tests (opt in by name or with ``pytest.mark.usefixtures``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist


@pytest.fixture
def float64_single_thread() -> Iterator[None]:
    """float64 default dtype and one intra-op thread for the test, restored afterwards."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float64)
    torch.set_num_threads(1)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


@pytest.fixture
def single_rank_process_group(tmp_path) -> Iterator[None]:
    """A one-rank gloo process group, so the sharded (all-reduce) code paths of §10 can run."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
