"""Torch's own optimizers, registered as the baselines of every table (SGD, Adam, AdamW)."""

import torch

from optimizers.registry import register

register("sgd")(torch.optim.SGD)
register("adam")(torch.optim.Adam)
register("adamw")(torch.optim.AdamW)
