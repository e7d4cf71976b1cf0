"""Multi-process training on the CPU (gloo, 2 processes): ranks stay identical under DDP for every kind of
optimizer, FSDP matches DDP, 2 processes match 1 to a derived tolerance, a killed or signalled job resumes
bitwise, and the refusals (batch not divisible by the world size, too many processes for the GPUs, an
optimizer FSDP cannot run) are one line each."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from runners import distributed
from runners.build import build_task
from runners.errors import ConfigError
from runners.loggers import NoLogger
from runners.loop import Trainer
from tests.runners.helpers import REPO, cli, compose_cfg, resume_args

STEPS = 30
COMMON = f"max_steps={STEPS},log_every_steps=5,torch_threads=1"
RANK_IDENTICAL = ("sgd", "adamw", "mechanic_sgd", "dadapt_adam", "prodigy", "dog", "metaoptimize")
FSDP_RESUMED = ("adamw", "mechanic_sgd", "metaoptimize")  # torch's, a nested and a non-parameter state
SGD0 = "optimizer=sgd,optimizer.momentum=0.0,optimizer.lr=0.1"
JOBS = {
    **{name: f"optimizer={name},{COMMON}" for name in RANK_IDENTICAL},
    "sgd0": f"{SGD0},{COMMON}",
    "fsdp_sgd": f"optimizer=sgd,distributed.strategy=fsdp,{COMMON}",
    "fsdp_adamw": f"optimizer=adamw,distributed.strategy=fsdp,{COMMON}",
    **{f"fsdp_{name}": f"optimizer={name},distributed.strategy=fsdp,{COMMON}" for name in RANK_IDENTICAL[2:]},
    **{
        f"fsdp_resumed_{name}": f"optimizer={name},distributed.strategy=fsdp,stop_at={STEPS // 2},{COMMON}"
        for name in FSDP_RESUMED
    },
    "fsdp_fused": f"optimizer=dadapt_adam,optimizer.fused=true,distributed.strategy=fsdp,{COMMON}",
}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> dict:
    """One torchrun launch trains every config of :data:`JOBS` in one 2-process group."""
    tmp = tmp_path_factory.mktemp("ddp")
    out = tmp / "out.pt"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += [str(REPO / "tests" / "runners" / "ddp_job.py"), str(out), str(tmp / "results")]
    command += [f"{name}={overrides}" for name, overrides in JOBS.items()]
    proc = subprocess.run(
        command,
        cwd=tmp,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return torch.load(out, weights_only=False)


@pytest.mark.parametrize("name", RANK_IDENTICAL)
def test_ranks_stay_bitwise_identical_under_ddp(two_ranks, name):
    rank0, rank1 = two_ranks["params"][name]
    assert len(rank0) == 2  # the toy task's Linear(4, 3): weight and bias
    assert all(torch.equal(a, b) for a, b in zip(rank0, rank1, strict=True))


def test_fsdp_matches_ddp_bitwise_for_elementwise_rules(two_ranks):
    """Sharding moves no arithmetic for an elementwise rule: the reduce-scatter sums the same two halves
    as DDP's all-reduce (dividing by 2 is exact), so FSDP's gathered weights equal DDP's bit for bit."""
    params = two_ranks["params"]
    for name in ("sgd", "adamw"):
        for rank in (0, 1):
            fsdp, ddp = params[f"fsdp_{name}"][rank], params[name][0]
            assert all(torch.equal(a, b) for a, b in zip(fsdp, ddp, strict=True)), (name, rank)


def test_fsdp_matches_ddp_for_rules_with_global_sums(two_ranks):
    """On FSDP each global sum of an LR-free rule (docs/optimizers/README.md §4) is the ranks' partial sums
    added by one all-reduce; on DDP one rank sums the whole tensor. Only the order of additions differs:
    a relative rounding of a few u = 2^-24 per sum, carried through 30 steps. Seen: learned scales within
    1e-5 relative (DoG's G 9e-6, the others <= 3e-7) and weights within 3e-6 of the largest weight. A sum
    left rank-local moves the scales by 0.6% (MetaOptimize's α) to 15% (Mechanic's s), so 1e-4 on the
    scales and 1e-5 on the weights separate rounding from a missing reduction by 10x either way."""
    params, scales = two_ranks["params"], two_ranks["scales"]
    for name in RANK_IDENTICAL[2:]:
        ddp, learned = params[name][0], scales[name][0]
        largest = max(float(p.abs().max()) for p in ddp)
        for rank in (0, 1):
            gap = max(
                float((a - b).abs().max()) for a, b in zip(params[f"fsdp_{name}"][rank], ddp, strict=True)
            )
            assert gap <= 1e-5 * largest, (name, rank, gap, largest)
            fsdp = scales[f"fsdp_{name}"][rank]
            for key, value in learned.items():
                assert math.isclose(fsdp[key], value, rel_tol=1e-4), (name, rank, key, fsdp[key], value)


@pytest.mark.parametrize("name", FSDP_RESUMED)
def test_fsdp_run_resumed_from_its_checkpoint_is_bitwise_uninterrupted(two_ranks, name):
    """The optimizer state is gathered whole into the checkpoint and sharded again on load."""
    for rank in (0, 1):
        resumed, whole = (
            two_ranks["params"][f"fsdp_resumed_{name}"][rank],
            two_ranks["params"][f"fsdp_{name}"][rank],
        )
        assert all(torch.equal(a, b) for a, b in zip(resumed, whole, strict=True)), (name, rank)


def test_fsdp_refuses_the_fused_kernels(two_ranks):
    message = two_ranks["errors"]["fsdp_fused"]
    assert (
        message
        == "distributed.strategy: optimizer 'dadapt_adam': fused=True does not run on FSDP-sharded parameters"
    )


def test_two_processes_match_one_to_a_derived_tolerance(two_ranks, tmp_path):
    """SGD without momentum, lr 0.1, on the toy task (linear softmax regression, global batch 16).

    Both runs see the same global batches; they differ only in rounding: the two ranks each average 8
    per-sample gradients and DDP averages the two means, one process averages all 16 (BLAS may also
    round an 8-row and a 16-row matmul differently). Per step and per element that is at most
    ``c u G`` with u = 2^-24, G the largest per-sample gradient element (|p - y| <= 1 times the largest
    |feature| or 1 for the bias) and c = 4 (n + d) = 80 a generous count of rounded operations (n = 16
    samples, d = 4 features). For lr <= 2/L (L <= max ||x~||^2 / 2 bounds the minibatch loss's curvature
    for softmax regression; checked below) a gradient step is non-expansive in the 2-norm, so after
    T steps over P parameters the gap obeys
    ``|gap|_inf <= T sqrt(P) (lr c u G + 2 u X)``, the last term the update's own rounding in each run
    (X bounds |parameter|). Here about 2e-4; the gap seen is about 3e-8, while a wrong loss weight or
    a lost half-batch moves the weights by ~lr."""
    cfg = compose_cfg(tmp_path, *f"{SGD0},{COMMON}".split(","))
    container = OmegaConf.to_container(cfg, resolve=True)
    single = Trainer(container, tmp_path / "single", NoLogger(), progress=False)
    assert single.run()["status"] == "completed"
    one = [p.detach() for p in single.model.parameters()]
    two = two_ranks["params"]["sgd0"][0]
    x = torch.cat([single.task.x, torch.ones(len(single.task.x), 1)], dim=1)
    lr, u, c, n_params = 0.1, 2.0**-24, 80, sum(p.numel() for p in one)
    curvature = 0.5 * float((x**2).sum(1).max())
    assert lr <= 2 / curvature
    grad_max = float(x.abs().max())
    x_max = 1 + max(float(p.abs().max()) for p in one)
    tol = STEPS * math.sqrt(n_params) * (lr * c * u * grad_max + 2 * u * x_max)
    gap = max(float((a - b).abs().max()) for a, b in zip(one, two, strict=True))
    assert gap <= tol, (gap, tol)
    assert 1e-5 < tol < 1e-3  # the bound stays far below a real error (~lr)


# -- the real command: launcher=torchrun, kill, signal and resume -------------------------------------

RESUME_STEPS = 3000
ARGS = (
    "logger=none",
    *resume_args(RESUME_STEPS),
    "launcher=torchrun",
    "launcher.nproc_per_node=2",
)


def _run_dir(tmp: Path) -> Path:
    dirs = list((tmp / "results" / "runs" / "adhoc").glob("*"))
    return dirs[0] if dirs else tmp / "missing"


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        kids = _children(todo.pop())
        found += kids
        todo += kids
    return found


def _rank_pid(pid: int, rank: int) -> int:
    for child in _descendants(pid):
        with open(f"/proc/{child}/environ", "rb") as f:
            if f"RANK={rank}".encode() in f.read().split(b"\0"):
                return child
    raise AssertionError(f"no process of rank {rank} under {pid}")


def test_killed_or_signalled_job_resumes_bitwise(tmp_path):
    """SIGKILL of every process of the job, and SIGTERM to rank 1 alone (every rank must checkpoint and
    stop), then the same command: both end bitwise identical to an uninterrupted 2-process run."""
    dirs = {name: tmp_path / name for name in ("reference", "sigkill", "sigterm")}
    for d in dirs.values():
        d.mkdir()
    procs = {name: cli(d, *ARGS) for name, d in dirs.items()}
    pending = {"sigkill", "sigterm"}
    deadline = time.monotonic() + 300
    while pending:
        for name in list(pending):
            if (_run_dir(dirs[name]) / "checkpoint.pt").exists():
                proc = procs[name]
                if name == "sigkill":
                    for pid in [proc.pid, *_descendants(proc.pid)]:
                        os.kill(pid, signal.SIGKILL)
                else:
                    os.kill(_rank_pid(proc.pid, 1), signal.SIGTERM)
                pending.discard(name)
            else:
                assert procs[name].poll() is None, procs[name].communicate()
        assert time.monotonic() < deadline, f"no checkpoint written: {sorted(pending)}"
        time.sleep(0.01)
    outputs = {name: p.communicate(timeout=600) for name, p in procs.items()}
    assert procs["reference"].returncode == 0, outputs["reference"][1][-3000:]
    assert procs["sigkill"].returncode == -signal.SIGKILL
    assert procs["sigterm"].returncode == 128 + signal.SIGTERM, outputs["sigterm"][1][-3000:]
    assert not (_run_dir(dirs["sigkill"]) / "summary.json").exists()
    preempted = json.loads((_run_dir(dirs["sigterm"]) / "summary.json").read_text())
    assert preempted["status"] == "preempted" and preempted["signal"] == "SIGTERM"
    assert preempted["world_size"] == 2 and 100 <= preempted["steps"] < RESUME_STEPS

    resumed = {name: cli(dirs[name], *ARGS) for name in ("sigkill", "sigterm")}
    for name, p in resumed.items():
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, (name, err[-3000:])
        assert out.count("resuming from step") == 1  # rank 0 alone speaks
    reference_dir = _run_dir(dirs["reference"])
    reference = (reference_dir / "metrics.jsonl").read_bytes()
    final = torch.load(reference_dir / "checkpoint.pt", weights_only=False)["model"]
    assert reference.count(b"\n") > 150
    for name in ("sigkill", "sigterm"):
        run_dir = _run_dir(dirs[name])
        assert run_dir.name == reference_dir.name
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["steps"] == RESUME_STEPS
        assert summary["world_size"] == 2 and summary["replicas_identical"] is True
        assert len(summary["resumed_from_steps"]) == 1 and summary["resumed_from_steps"][0] >= 100
        assert (run_dir / "metrics.jsonl").read_bytes() == reference, name
        model = torch.load(run_dir / "checkpoint.pt", weights_only=False)["model"]
        assert model.keys() == final.keys() and all(torch.equal(model[k], final[k]) for k in final)
    # the unwrapped state dict: a 1-process model loads it as it is
    torch.nn.Linear(4, 3).load_state_dict(final)


# -- refusals, no process group needed ------------------------------------------------------------------


def test_batch_not_divisible_by_world_size_is_refused_with_both_numbers(tmp_path):
    container = OmegaConf.to_container(compose_cfg(tmp_path, "task.batch_size=16"), resolve=True)
    world = distributed.World(torch.device("cpu"), rank=0, world_size=3)
    with pytest.raises(ConfigError) as info:
        build_task(container, world)
    assert info.value.key == "task.batch_size"
    assert "16" in info.value.message and "world size 3" in info.value.message


def test_more_processes_than_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError) as info:
        distributed.relaunch(2, torch.device("cuda"), [])
    assert info.value.key == "launcher.nproc_per_node"
    assert info.value.message == "2 processes but 1 CUDA devices on this node"


def test_single_process_has_no_group(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(key, raising=False)
    world = distributed.setup(torch.device("cpu"))
    assert (world.rank, world.world_size, world.is_main, world.distributed) == (0, 1, True, False)
    assert not torch.distributed.is_initialized()
