"""Subprocess half of the state round-trip test: load a checkpoint, continue, save the parameters.

Usage: python _battery_worker.py <config.yaml> <checkpoint.pt> <start_step> <n_steps> <out.pt>
"""

import sys

import torch

from tests.optimizers.battery_problem import build, run_steps

if __name__ == "__main__":
    cfg_path, ckpt, start, n, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)
    model, opt = build(cfg_path)
    state = torch.load(ckpt, weights_only=False)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    run_steps(model, opt, start, n)
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out)
