"""Torch's own optimizers, registered as the baselines of every table (SGD, Adam, AdamW).

Their rules are elementwise, so they run unchanged on FSDP's sharded (DTensor) parameters.
"""

import torch

from optimizers.registry import register

register("sgd", sharded=True)(torch.optim.SGD)
register("adam", sharded=True)(torch.optim.Adam)
register("adamw", sharded=True)(torch.optim.AdamW)
