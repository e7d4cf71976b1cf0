"""``make sweep`` / ``make sweep-status``: a paper table's runs as SLURM job arrays, and where they stand.

    python scripts/sweep.py submit dadapt_figure2 [--launcher slurm] [table options] [runner overrides]
    python scripts/sweep.py status dadapt_figure2 [table options] [runner overrides]

The table's own script plans the runs (Table 1: ``scripts/reproduce_table1.py``, whose options the
table options are, e.g. ``--seeds 10 --datasets iris,glass``); runner overrides may set the launcher's
keys too (``hydra.launcher.partition=gpu``). ``submit`` skips every run the results store holds as
completed or diverged, covers the rest with as few Cartesian blocks as it can, submits each block as one
Hydra multirun (on SLURM: one job array, returning once queued), prints the job ids and where results
land, and records ``<results>/sweeps/<experiment>/<block>/runs.json`` (job id -> run dir). ``status``
counts the planned runs: completed, running (queued or running in squeue), failed, diverged, missing.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra._internal.config_loader_impl import ConfigLoaderImpl  # noqa: E402
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: E402
from omegaconf import OmegaConf, open_dict  # noqa: E402

from runners import store  # noqa: E402
from runners.batched import unpack  # noqa: E402
from runners.train import CONFIG_DIR, FINISHED, run_dir_for  # noqa: E402
from scripts import reproduce_table1  # noqa: E402
from scripts.report import table_planner  # noqa: E402

#: experiment -> the script that plans its runs (``build_parser()`` and ``sweeps(args, local)``)
PLANNERS = {reproduce_table1.EXPERIMENT: reproduce_table1}
LAUNCHERS = {"slurm": "submitit_slurm", "joblib": "joblib", "basic": "basic"}
STATES = ("completed", "running", "failed", "diverged", "missing")


def _planner(experiment: str) -> Any:
    """The experiment's planner: a table's own script, else the table protocols' rows that name it."""
    planner = PLANNERS.get(experiment) or table_planner(experiment)
    if planner is None:
        raise SystemExit(
            f"error: EXPERIMENT: no planner for {experiment!r}; known: {sorted(PLANNERS)} and the "
            "experiments configs/table/table*.yaml rows name (configs/experiment/<name>.yaml must exist)"
        )
    return planner


def planned_runs(
    experiment: str, table_args: list[str], launcher: str
) -> tuple[list[list[list[str]]], list[str]]:
    """The experiment's multiruns, each expanded into its runs' override lists (Hydra's own expansion
    and order), and the planner's notes on what it leaves out."""
    planner = _planner(experiment)
    args = planner.build_parser().parse_args(table_args)
    multiruns, _, notes = planner.sweeps(args, local=launcher != "slurm")
    parser = OverridesParser.create()
    head = [f"experiment={experiment}", f"launcher={LAUNCHERS[launcher]}"]
    expanded = [BasicSweeper.split_arguments(parser.parse_overrides([*head, *m]), None)[0] for m in multiruns]
    return expanded, notes


def _is_group(key: str) -> bool:
    return key.startswith("hydra/") or (CONFIG_DIR / key).is_dir()


def run_dirs(runs: list[list[str]]) -> list[Path]:
    """Each run's dir as the runner names it. Composing the app's config takes about half a second, so
    it is composed once per choice of config groups and the other overrides are applied to a copy, as
    Hydra applies them after composing."""
    parser = OverridesParser.create()
    composed: dict[tuple[str, ...], Any] = {}
    dirs = []
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for run in runs:
            overrides = parser.parse_overrides(run)
            groups = tuple(o.input_line for o in overrides if _is_group(o.key_or_group))
            if groups not in composed:
                composed[groups] = compose("train", overrides=list(groups), return_hydra_config=True)
            cfg = copy.deepcopy(composed[groups])
            ConfigLoaderImpl._apply_overrides_to_config(
                [o for o in overrides if not _is_group(o.key_or_group)], cfg
            )
            HydraConfig.instance().set_config(cfg)
            with open_dict(cfg):
                del cfg.hydra
            dirs.append(run_dir_for(cfg, OmegaConf.to_container(cfg, resolve=True)))
    return dirs


def cartesian_blocks(runs: list[list[str]]) -> list[list[str]]:
    """Cover ``runs`` (override lists over the same keys, in one order) exactly by Cartesian products,
    each written as Hydra sweep overrides (``key=a,b``); values that share the rest of a block merge."""
    keys = [o.split("=", 1)[0] for o in runs[0]]
    rows = sorted({tuple(o.split("=", 1)[1] for o in run) for run in runs})

    def cover(rows: list[tuple[str, ...]]) -> list[tuple[tuple[str, ...], ...]]:
        if not rows[0]:
            return [()]
        rest_by_value: dict[str, list[tuple[str, ...]]] = {}
        for row in rows:
            rest_by_value.setdefault(row[0], []).append(row[1:])
        values_by_rest: dict[tuple, list[str]] = {}
        for value, rest in rest_by_value.items():
            values_by_rest.setdefault(tuple(cover(rest)), []).append(value)
        return [(tuple(values), *block) for rest, values in values_by_rest.items() for block in rest]

    return [[f"{k}={','.join(v)}" for k, v in zip(keys, block, strict=True)] for block in cover(rows)]


def queued_jobs() -> dict[str, str] | None:
    """``{job id: state}`` of this user's queued and running SLURM jobs (array tasks one by one); None
    without SLURM."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-r", "--me", "-o", "%i|%T"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None
    return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)


def submit(experiment: str, launcher: str, table_args: list[str]) -> int:
    expanded, notes = planned_runs(experiment, table_args, launcher)
    for note in notes:
        print(note)
    results = Path(_planner(experiment).build_parser().parse_args(table_args).results).resolve()
    stamp = dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    todo_total = done_total = 0
    for k, runs in enumerate(expanded):
        dirs = run_dirs(runs)
        todo = [(run, d) for run, d in zip(runs, dirs, strict=True) if _status(d) not in FINISHED]
        done_total += len(runs) - len(todo)
        todo_total += len(todo)
        for b, block in enumerate(cartesian_blocks([run for run, _ in todo]) if todo else []):
            sweep_dir = results / "sweeps" / experiment / f"{stamp}-{k}-{b}"
            cmd = [sys.executable, "-m", "runners.train", "-m", *block, f"hydra.sweep.dir={sweep_dir}"]
            if launcher == "slurm":
                cmd.append("hydra.launcher.wait=false")
            print("+ " + " ".join(cmd[1:]), flush=True)
            code = subprocess.run(cmd, cwd=REPO).returncode
            if code:
                return code
            if launcher == "slurm":
                _record(sweep_dir, dict(todo_key_pairs(todo)))
    print(f"{experiment}: {todo_total} runs submitted, {done_total} already finished in the results store")
    print(f"results land in {results / 'runs' / experiment}/")
    print(f"progress: make sweep-status EXPERIMENT={experiment}")
    return 0


def todo_key_pairs(todo: list[tuple[list[str], Path]]) -> list[tuple[str, Path]]:
    """``(canonical overrides, run dir)``: how a run is found again in the launcher's job list."""
    return [(_canonical(run), d) for run, d in todo]


def _canonical(overrides: list[str]) -> str:
    return "\n".join(sorted(overrides))


def _record(sweep_dir: Path, run_dir_of: dict[str, Path]) -> None:
    """``runs.json`` beside the launcher's ``slurm_jobs.json``: each job id with its run dirs."""
    jobs = json.loads((sweep_dir / "slurm_jobs.json").read_text())
    runs = {}
    for job in jobs:
        # the launcher lists each job's overrides, the block's swept values resolved to one each; a
        # batched group's job holds several runs (runners/batched.py)
        overrides = [o for o in job["overrides"] if not o.startswith("hydra.")]
        runs[job["job_id"]] = [str(run_dir_of[_canonical(run)]) for run in unpack(overrides)]
    store.atomic_write_json(sweep_dir / "runs.json", runs)


def _status(run_dir: Path) -> str | None:
    summary = store.read_summary(run_dir)
    return None if summary is None else summary.get("status")


def status(experiment: str, table_args: list[str]) -> int:
    expanded, notes = planned_runs(experiment, table_args, "slurm")
    results = Path(_planner(experiment).build_parser().parse_args(table_args).results).resolve()
    dirs = [d for runs in expanded for d in run_dirs(runs)]
    queued = queued_jobs()
    live: dict[str, str] = {}  # run dir -> SLURM state, for runs with a job in the queue
    for record in sorted((results / "sweeps" / experiment).glob("*/runs.json")):
        for job_id, dirs_of_job in json.loads(record.read_text()).items():
            if queued is not None and job_id in queued:
                live.update(dict.fromkeys(dirs_of_job, queued[job_id]))
    counts: Counter[str] = Counter()
    failed = []
    for d in dirs:
        state = _status(d)
        if state in FINISHED:
            counts[state] += 1
        elif str(d) in live:
            counts["running"] += 1
            counts["pending"] += live[str(d)] == "PENDING"
        elif state == "failed":
            counts["failed"] += 1
            failed.append(d)
        else:  # never started, or interrupted without a job to resume it: `make sweep` submits it
            counts["missing"] += 1
    for note in notes:
        print(note)
    print(f"{experiment}: {len(dirs)} runs planned, results in {results / 'runs' / experiment}/")
    for state in STATES:
        extra = f" ({counts['pending']} of them pending)" if state == "running" and counts["pending"] else ""
        print(f"  {state:<10}{counts[state]:>6}{extra}")
    if queued is None:
        print("  (no squeue here: runs still queued on SLURM count as missing)")
    for d in failed[:10]:
        print(f"failed: {d}: {(store.read_summary(d) or {}).get('error', '')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=("submit", "status"))
    ap.add_argument("experiment")
    ap.add_argument("--launcher", choices=sorted(LAUNCHERS), default=os.environ.get("LAUNCHER", "slurm"))
    args, table_args = ap.parse_known_args(argv)
    if args.command == "submit":
        return submit(args.experiment, args.launcher, table_args)
    return status(args.experiment, table_args)


if __name__ == "__main__":
    sys.exit(main())
