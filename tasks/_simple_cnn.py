"""MetaOptimize's continual-learning model (the authors' ``models.py`` SimpleCNN), its stream counters, and
R of them stacked for batched runs (tasks/continual_cifar100.py; docs/optimizers/README.md §6)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from tasks._stacked_modules import StackedModules, batch1_linear, grouped_conv2d


class StreamStats(torch.nn.Module):
    """Per-task online hits and steps, test accuracy at each task's end, the current task: buffers, so
    they sit on the device and go into the runner's checkpoint with the weights."""

    def __init__(self, num_tasks: int) -> None:
        super().__init__()
        self.register_buffer("correct", torch.zeros(num_tasks, dtype=torch.int64))
        self.register_buffer("seen", torch.zeros(num_tasks, dtype=torch.int64))
        self.register_buffer("test_accuracy", torch.full((num_tasks,), float("nan")))
        self.register_buffer("current", torch.zeros((), dtype=torch.int64))


class SimpleCNN(torch.nn.Module):
    """The authors' ``models.py`` SimpleCNN; parameter names match the ``continual_cnn`` block preset
    (conv1, conv2, fc1 | fc2: MetaOptimize's 2 blocks, docs/optimizers/metaoptimize.md §6)."""

    def __init__(self, in_channels: int, image_size: int, num_outputs: int, num_tasks: int) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(in_channels, 16, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = torch.nn.Linear(32 * (image_size // 4) ** 2, 128)
        self.fc2 = torch.nn.Linear(128, num_outputs)
        self.stream = StreamStats(num_tasks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def stacked_cnn_forward(model: StackedModules, x: torch.Tensor) -> torch.Tensor:
    """R stacked SimpleCNNs on one image each, ``x`` ``[R, 1, C, S, S]`` -> logits ``[R, 1, classes]``:
    :meth:`SimpleCNN.forward` per member, as grouped convolutions and elementwise linears."""
    if x.shape[1] != 1:
        raise ValueError(f"stacked SimpleCNNs take one image per member (batch 1), got {tuple(x.shape)}")
    m: Any = model
    h = F.max_pool2d(F.relu(grouped_conv2d(x.flatten(0, 1), m.conv1.weight, m.conv1.bias, 1)), 2)
    h = F.max_pool2d(F.relu(grouped_conv2d(h, m.conv2.weight, m.conv2.bias, 1)), 2)
    h = F.relu(batch1_linear(h.flatten(1), m.fc1.weight, m.fc1.bias))
    return batch1_linear(h, m.fc2.weight, m.fc2.bias).unsqueeze(1)
