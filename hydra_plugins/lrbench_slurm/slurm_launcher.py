"""``launcher=submitit_slurm``: hydra-submitit-launcher's SLURM launcher, made to behave on a real cluster.

On top of the upstream launcher (one job array per multirun, submitit's pickles and checkpoint/requeue):

- what SLURM refuses is one line ``error: hydra.launcher.<key>: <SLURM's message>`` (exit 2), not a
  traceback: no ``sbatch`` on PATH, an unknown partition, account or QOS, a bad time string;
- a job SLURM can never start (pending reason ``PartitionConfig`` and the like: more CPUs, memory or GPUs
  than any node of the partition has) is cancelled at once with SLURM's reason and the partition's
  largest node; any other pending reason is printed when it changes, so no job is waited on in silence;
- preemption and time-outs: submitit signals the job with SIGUSR1 (upstream: USR2), the runner checkpoints
  on it and hands it on to submitit, which requeues the job; the batch script passes a SIGUSR1 sent to it
  alone (``scancel --batch``) on to the job step (:data:`BATCH_SETUP`);
- ``time`` takes SLURM's own time strings (``4:00:00``, ``2-00:00:00``) and wins over ``timeout_min``;
- ``wait: false`` returns as soon as the jobs are queued (``make sweep``);
- ``<sweep dir>/slurm_jobs.json`` lists each job id with its overrides.
"""

# no `from __future__ import annotations`: Hydra runs this module before it is in sys.modules, where
# dataclasses could not resolve string annotations
import contextlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.config_store import ConfigStore
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher import submitit_launcher
from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

log = logging.getLogger(__name__)

EXIT_BAD_INPUT = 2
#: pending reasons that no amount of waiting resolves (``squeue`` man page, JOB REASON CODES)
NEVER_STARTS = (
    "PartitionConfig",
    "PartitionNodeLimit",
    "PartitionTimeLimit",
    "BadConstraints",
    "InvalidAccount",
    "InvalidQOS",
)
PREEMPT_SIGNAL = "USR1"  # the runner checkpoints on SIGUSR1 (and SIGTERM); submitit's default is USR2
#: first lines of every batch script. ``scancel --batch`` and ``--signal=B:...`` signal the batch shell
#: alone, which would die of it while the training goes on unaware, and a shell runs no trap while a
#: command runs in its foreground: so submitit's srun runs in the background and the shell hands the
#: signal on to it (srun passes it to every task). Signals sent to the job step reach the tasks directly.
BATCH_SETUP = [
    f"export SUBMITIT_PREEMPT_SIGNAL={PREEMPT_SIGNAL}",
    "srun() {",
    '  command srun "$@" &',
    "  local step=$! status",
    f"  trap 'kill -s {PREEMPT_SIGNAL} '\"$step\"' 2>/dev/null' {PREEMPT_SIGNAL}",
    '  wait "$step"; status=$?',
    '  while kill -0 "$step" 2>/dev/null; do wait "$step"; status=$?; done  # a trap ends `wait` early',
    '  return "$status"',
    "}",
]
#: how long ``wait: false`` gives the scheduler to look at new jobs before returning
FIRST_LOOK_S = 15.0


@dataclass
class LrbenchSlurmConf(SlurmQueueConf):
    _target_: str = "hydra_plugins.lrbench_slurm.slurm_launcher.SlurmLauncher"
    # SLURM's --time (minutes, H:M:S, D-H:M:S, ...); when set it replaces timeout_min
    time: str | None = None
    # false: return once the jobs are queued; results land in the results store either way
    wait: bool = True


ConfigStore.instance().store(
    group="hydra/launcher", name="lrbench_slurm", node=LrbenchSlurmConf, provider="lrbench"
)


def refuse(key: str, message: str) -> NoReturn:
    """A bad launcher setting: one line ``error: <key>: <message>`` on stderr, exit code 2 (the runner's)."""
    print(f"error: {key}: {message}", file=sys.stderr)
    raise SystemExit(EXIT_BAD_INPUT)


def slurm_minutes(spec: str) -> int | None:
    """Minutes in a SLURM time string (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S), rounded up; None when it is
    not one (sbatch then refuses it with its own message)."""
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", spec.strip())
    if m is None:
        return None
    days, a, b, c = (int(x) if x is not None else None for x in m.groups())
    if days is not None:
        hours, minutes, seconds = a, b or 0, c or 0
    elif c is not None:
        hours, minutes, seconds = a, b, c
    else:
        hours, minutes, seconds = 0, a, b or 0
    return (days or 0) * 1440 + hours * 60 + minutes + (seconds > 0)


def sbatch_error_key(message: str) -> str:
    """The launcher key an sbatch error is about, as far as its wording tells."""
    for word, key in (
        ("partition", "partition"),
        ("--time", "time"),
        ("time limit", "time"),
        ("account", "account"),
        ("qos", "qos"),
        ("gres", "gpus_per_node"),
        ("memory", "mem_gb"),
    ):
        if word in message.lower():
            return f"hydra.launcher.{key}"
    return "hydra.launcher"


def _run(cmd: list[str]) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout


def queue_states(job_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """``{task id: (state, reason)}`` from squeue for the jobs (array tasks one by one) still queued."""
    bases = sorted({j.split("_")[0] for j in job_ids})
    try:
        out = _run(["squeue", "-h", "-r", "-o", "%i|%T|%r", "-j", ",".join(bases)])
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
        return {}  # jobs already gone from the queue, or squeue busy: the next look tells
    states = {}
    for line in out.splitlines():
        task, state, reason = line.split("|", 2)
        states[task] = (state, reason)
    return states


def largest_node(partition: str | None) -> dict[str, int]:
    """CPUs, memory (MB) and GPUs of the partition's largest node (sinfo), per resource."""
    cmd = ["sinfo", "-h", "-N", "-o", "%c|%m|%G"] + (["-p", partition] if partition else [])
    sizes = {"cpus": 0, "mem_mb": 0, "gpus": 0}
    with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError):
        for line in _run(cmd).splitlines():
            cpus, mem, gres = line.split("|")
            gpus = sum(int(n) for n in re.findall(r"gpu(?::[\w.-]+)?:(\d+)", gres))
            for key, value in (("cpus", cpus), ("mem_mb", mem), ("gpus", gpus)):
                sizes[key] = max(sizes[key], int(str(value).rstrip("+")))
    return sizes


class SlurmLauncher(submitit_launcher.SlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        if shutil.which("sbatch") is None:
            refuse(
                "launcher",
                "submitit_slurm submits with SLURM's sbatch, which is not on PATH: run on the cluster's "
                "login node, or start a one-node SLURM here with `scripts/slurm/cluster.sh start`",
            )
        os.environ["SUBMITIT_PREEMPT_SIGNAL"] = PREEMPT_SIGNAL  # read by submitit at import
        import submitit

        if submitit.JobEnvironment.USR_SIG != PREEMPT_SIGNAL:
            raise RuntimeError(
                f"submitit was imported before the launcher set its signal to {PREEMPT_SIGNAL}"
            )
        params = dict(self.params)
        wait, slurm_time = params.pop("wait"), params.pop("time")
        folder, max_num_timeout = params.pop("submitit_folder"), params.pop("max_num_timeout")
        if slurm_time is not None:
            params["additional_parameters"] = {
                **(params.get("additional_parameters") or {}),
                "time": slurm_time,
            }
            # submitit's own bookkeeping (has the job timed out?) counts in minutes
            params["timeout_min"] = slurm_minutes(str(slurm_time)) or params["timeout_min"]
        params["setup"] = [*BATCH_SETUP, *(params.get("setup") or [])]
        executor = submitit.SlurmExecutor(folder, max_num_timeout=max_num_timeout)
        executor.update_parameters(
            **executor._convert_parameters({k: v for k, v in params.items() if v is not None})
        )

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        job_params = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
            job_params.append(
                (list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state())
            )
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr):  # submitit prints sbatch's stderr, then raises it
                jobs = executor.map_array(self, *zip(*job_params, strict=True))
        except submitit.core.utils.FailedJobError as exc:
            lines = [re.sub(r"^sbatch: error: ", "", x) for x in str(exc).splitlines() if x.strip()]
            message = "sbatch: " + "; ".join(lines)
            refuse(sbatch_error_key(message), message)
        job_ids = [job.job_id for job in jobs]
        manifest = [{"job_id": j, "overrides": list(o)} for j, o in zip(job_ids, job_overrides, strict=True)]
        (sweep_dir / "slurm_jobs.json").write_text(json.dumps(manifest, indent=1) + "\n")
        shown = job_ids[0] if len(job_ids) == 1 else f"{job_ids[0].split('_')[0]}_[0-{len(job_ids) - 1}]"
        print(f"submitted SLURM job {shown} ({len(jobs)} runs); its logs: {jobs[0].paths.folder.parent}")
        self._watch(jobs, job_ids, wait)
        if not wait:
            # Hydra reads return values only to re-raise failures; a queued job has none yet
            return [JobReturn(overrides=list(o), status=JobStatus.COMPLETED) for o in job_overrides]
        return [job.results()[0] for job in jobs]

    def _watch(self, jobs: list[Any], job_ids: list[str], wait: bool) -> None:
        """Refuse jobs SLURM can never start and print each new pending reason; with ``wait``, until every
        job is done, else until the scheduler has looked at them all (at most :data:`FIRST_LOOK_S`)."""
        said: dict[str, str] = {}
        start = time.monotonic()
        while True:
            queued = queue_states(job_ids)
            pending = {t: reason for t, (state, reason) in queued.items() if state == "PENDING"}
            never = {t: r for t, r in pending.items() if r in NEVER_STARTS}
            if never:
                self._refuse(job_ids, never)
            by_reason: dict[str, list[str]] = {}
            for task, reason in pending.items():
                if reason != "None" and said.get(task) != reason:
                    by_reason.setdefault(reason, []).append(task)
                    said[task] = reason
            for reason, tasks in by_reason.items():
                print(
                    f"SLURM: {len(tasks)} job(s) pending ({reason}): {' '.join(tasks[:8])}", file=sys.stderr
                )
            looked_at = all(r != "None" for r in pending.values())
            if not wait and (looked_at or time.monotonic() - start > FIRST_LOOK_S):
                return
            if wait and all(job.done() for job in jobs):
                return
            time.sleep(1.0 if time.monotonic() - start < 30 else 10.0)

    def _refuse(self, job_ids: list[str], never: dict[str, str]) -> None:
        subprocess.run(["scancel", *sorted({j.split("_")[0] for j in job_ids})], check=False, timeout=60)
        task, reason = next(iter(never.items()))
        p = self.params
        node = largest_node(p.get("partition"))
        tasks, cpus = int(p.get("tasks_per_node") or 1), int(p.get("cpus_per_task") or 1)
        mem_gb, gpus = p.get("mem_gb"), int(p.get("gpus_per_node") or 0)
        key = "hydra.launcher"
        if tasks * cpus > node["cpus"] > 0:
            key += ".cpus_per_task"
        elif mem_gb and mem_gb * 1024 > node["mem_mb"] > 0:
            key += ".mem_gb"
        elif gpus > node["gpus"]:
            key += ".gpus_per_node"
        partition = p.get("partition") or "(the default)"
        refuse(
            key,
            f"SLURM can never start job {task} on partition {partition} (pending reason {reason}); cancelled "
            f"{len(job_ids)} job(s). Asked per node: {tasks} task(s) x {cpus} CPUs, "
            f"{f'{mem_gb} GB' if mem_gb else 'default memory'}, {gpus} GPUs; the partition's largest node "
            f"has {node['cpus']} CPUs, {node['mem_mb']} MB, {node['gpus']} GPUs",
        )
