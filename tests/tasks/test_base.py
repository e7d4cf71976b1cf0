"""The task contract's sharding: each rank's part of a global batch, and the loss factor of uneven parts."""

from __future__ import annotations

import pytest
import torch

from tasks.toy import ToyIris


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_rank_parts_tile_each_global_batch_in_order(world_size):
    """Concatenated in rank order, the ranks' parts are the one-process batches, for every epoch."""
    single = ToyIris(seed=3, batch_size=16)
    ranks = [ToyIris(seed=3, batch_size=16, rank=r, world_size=world_size) for r in range(world_size)]
    assert {t.steps_per_epoch for t in ranks} == {single.steps_per_epoch}
    for epoch in (0, 1):
        per_rank = [list(t.train_batches(epoch)) for t in ranks]
        for step, (x, y, factor) in enumerate(single.train_batches(epoch)):
            parts = [batches[step] for batches in per_rank]
            assert torch.equal(torch.cat([p[0] for p in parts]), x) and factor is None
            assert torch.equal(torch.cat([p[1] for p in parts]), y)


def test_uneven_last_batch_weights_a_summed_loss_to_the_global_mean():
    """150 samples in batches of 16 leave 6; four ranks get 2, 2, 1 and 1 of them. The
    mean over ranks of their weighted losses is the one-process mean loss of that batch."""
    single = ToyIris(seed=0, batch_size=16)
    ranks = [ToyIris(seed=0, batch_size=16, rank=r, world_size=4) for r in range(4)]
    torch.manual_seed(0)
    model = single.build_model()
    last = list(single.train_batches(0))[-1]
    parts = [list(t.train_batches(0))[-1] for t in ranks]
    assert [len(p[1]) for p in parts] == [2, 2, 1, 1] and all(p[2] == 4 / 6 for p in parts)
    mean_over_ranks = sum(t.loss(model, p) for t, p in zip(ranks, parts, strict=True)) / 4
    torch.testing.assert_close(mean_over_ranks, single.loss(model, last), rtol=1e-6, atol=0)


def test_rank_outside_the_world_is_refused():
    with pytest.raises(ValueError, match=r"rank=2 must lie in \[0, world_size=2\)"):
        ToyIris(seed=0, rank=2, world_size=2)
