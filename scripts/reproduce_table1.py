"""Table 1 end to end: every run of the LIBSVM suite through the runner, then the table and figures.

    python scripts/reproduce_table1.py                 # 3 seeds, all cores, embedded data
    SEEDS=10 JOBS=2 python scripts/reproduce_table1.py  # the paper's 10 seeds
    python scripts/reproduce_table1.py --report-only   # re-make table + figures from finished runs

A thin driver of ``configs/table/table1.yaml``, which holds the protocol (problems, seeds, optimizers,
their LR grids and overrides). Each optimizer's runs are one Hydra multirun of ``runners.train`` with the
table's experiment; the runner's sweeper packs each problem's seeds x LRs into one batched program
(runners/batched.py), and up to ``JOBS`` multiruns run at once. The runner maps each run to a fixed run dir
and skips finished runs, so a rerun only does what is missing. Problems with no data are listed as
``not run`` with the command that fetches them; optimizers with no ``configs/optimizer/<name>.yaml``
likewise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runners import multiruns  # noqa: E402
from runners.reports import paper  # noqa: E402
from runners.reports.table1 import GRID, OPTIMIZERS, PAPER_FILES, protocol  # noqa: E402
from tasks._libsvm_data import DATASETS, availability  # noqa: E402

PROTOCOL = protocol()
EXPERIMENT = PROTOCOL["experiment"]
TABLE_IMPORTS = ("tasks.libsvm_logreg", "rdata")  # what every run imports: once, before the workers fork


def _grid(name: str) -> str:
    return ",".join(repr(float(v)) for v in PROTOCOL["optimizers"][name].get("grid") or [])


def plan(
    data: Path, datasets: list[str], optimizers: list[str]
) -> tuple[list[str], dict[str, str], list[str]]:
    """(problems to run, their data source, optimizers to run), the problem with most steps first (at
    batch 16 a step's cost is mostly per-call overhead, so a run's cost goes with its rows)."""
    avail = availability(data)
    run = [d for d in datasets if avail.get(d)]
    run.sort(key=lambda d: (-DATASETS[d].rows, -DATASETS[d].features))
    have = [o for o in optimizers if (REPO / "configs" / "optimizer" / f"{o}.yaml").is_file()]
    return run, {d: avail[d] or "missing" for d in DATASETS}, have


def select_runs(
    df: pd.DataFrame, datasets: list[str], optimizers: list[str], seeds: int, grids: dict[str, str]
) -> pd.DataFrame:
    """The runs of this invocation's plan: its problems, optimizers, seeds and grid LRs; where a results
    folder holds several runs of one (problem, optimizer, seed, LR) (an older config), the newest."""
    if df.empty:
        return df
    keep = df["dataset"].astype(str).str.lower().isin(datasets) & df["optimizer"].isin(optimizers)
    keep &= df["seed"].isin(range(seeds))
    for opt, grid in grids.items():
        lrs = np.array([float(v) for v in grid.split(",")])
        lr = pd.to_numeric(df["lr"], errors="coerce").to_numpy(dtype=float)
        on_grid = np.isclose(lr[:, None], lrs[None, :], rtol=1e-6).any(axis=1)
        keep &= (df["optimizer"] != opt) | on_grid
    df = df[keep].copy()
    df["_mtime"] = [(Path(d) / "summary.json").stat().st_mtime for d in df["run_dir"]]
    df = df.sort_values("_mtime").drop_duplicates(["dataset", "optimizer", "seed", "lr"], keep="last")
    return df.drop(columns="_mtime").sort_values(["dataset", "optimizer", "lr", "seed"], ignore_index=True)


def preflight(figures: bool) -> None:
    """Stop in seconds, with one line, when something the report needs is missing (before any run)."""
    paper.require(PAPER_FILES)
    if figures:
        try:
            import matplotlib  # noqa: F401
        except ImportError as e:
            raise SystemExit(f"error: the figures need matplotlib ({e}); run `make setup`") from None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=int(os.environ.get("SEEDS", PROTOCOL["seeds"])))
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("JOBS", os.cpu_count() or 1)))
    ap.add_argument("--datasets", default=",".join(PROTOCOL["datasets"]), help="comma list (default: all 12)")
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS), help="comma list (default: all 11)")
    for name in GRID:
        ap.add_argument(f"--grid-{name}", default=_grid(name), help=f"{name}'s LR grid (comma list)")
    ap.add_argument("--logger", default=os.environ.get("LOGGER", "none"), help="none (default) or wandb")
    ap.add_argument("--results", default=os.environ.get("LRBENCH_RESULTS", "results"))
    ap.add_argument("--data", default=os.environ.get("LRBENCH_DATA", "data"))
    ap.add_argument("--report-only", action="store_true", help="skip training; table + figures only")
    ap.add_argument("--no-figures", action="store_true")
    ap.add_argument("overrides", nargs="*", help="extra runner overrides, e.g. task.epochs=2")
    return ap


def grids(args: argparse.Namespace) -> dict[str, str]:
    return {name: getattr(args, f"grid_{name}") for name in GRID}


def sweeps(args: argparse.Namespace, local: bool = True) -> tuple[list[list[str]], dict[str, str], list[str]]:
    """Table 1's runs as Hydra multiruns of the runner (overrides after ``experiment=<the table's>``,
    swept values comma-separated): one per optimizer, with its protocol overrides and, for a grid-searched
    baseline, its LR grid. Also each problem's data source and what is not run.
    ``local``: the runs share this machine's cores (``args.jobs`` workers), not a cluster's; then each
    optimizer's multirun is split so that the workers end together: one per large problem (at least a
    quarter of the largest one's rows), largest first, then one for all the small ones (whose runs take
    less than a multirun's fixed second of Hydra composes)."""
    results, data = Path(args.results).resolve(), Path(args.data).resolve()
    datasets = [d.strip().lower() for d in args.datasets.split(",") if d.strip()]
    optimizers = [o.strip() for o in args.optimizers.split(",") if o.strip()]
    to_run, sources, opts = plan(data, datasets, optimizers)
    notes = [
        f"not run: {DATASETS[d].name} (no data in {data}; `python scripts/download_data.py status`)"
        for d in datasets
        if sources[d] == "missing"
    ]
    missing_opts = sorted(set(optimizers) - set(opts))
    if missing_opts:
        notes.append(f"not run: optimizers without a config: {', '.join(missing_opts)}")
    if not to_run:
        return [], sources, notes
    common = [
        *([] if data == REPO / "data" else [f"task.root={data}"]),  # the root is part of the run id
        f"results_dir={results}",
        f"logger={args.logger}",
        f"seed={','.join(str(s) for s in range(args.seeds))}",
        # one thread per run: these models are too small for intra-op threads, whose OpenMP workers spin
        # on cores the other runs (or other programs) need, slowing every step several-fold
        *(["torch_threads=1"] if local else []),
        *args.overrides,
    ]
    runs = []
    large = [d for d in to_run if 4 * DATASETS[d].rows >= DATASETS[to_run[0]].rows] if local else []
    chunks = [*large, ",".join(d for d in to_run if d not in large)]
    for problems in filter(None, chunks):
        for opt in opts:  # one multirun per optimizer: its protocol overrides, its grid
            spec = PROTOCOL["optimizers"].get(opt, {})
            sweep = [f"optimizer={opt}", *spec.get("overrides", [])]
            if opt in GRID:
                sweep.append(f"optimizer.lr={grids(args)[opt]}")
            runs.append([f"{PROTOCOL['task_key']}={problems}", *common, *sweep])
    return runs, sources, notes


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    preflight(figures=not args.no_figures)
    results = Path(args.results).resolve()
    datasets = [d.strip().lower() for d in args.datasets.split(",") if d.strip()]
    optimizers = [o.strip() for o in args.optimizers.split(",") if o.strip()]
    runs, sources, notes = sweeps(args)
    for note in notes:
        print(note)

    t0 = time.monotonic()
    if not args.report_only and runs:
        logs = results / "logs" / "table1"
        logs.mkdir(parents=True, exist_ok=True)
        jobs = max(1, args.jobs)
        print(f"{len(runs)} multiruns of the runner, {jobs} at a time (their commands and output: {logs}/)")
        full = [[f"experiment={EXPERIMENT}", *o] for o in runs]
        named = [(o, logs / multiruns.log_name(o, "optimizer", PROTOCOL["task_key"])) for o in full]
        multiruns.run(named, jobs, preload=TABLE_IMPORTS)
        print(f"runs done in {time.monotonic() - t0:.0f} s (logs: {logs}/)")

    from runners.collect import collect
    from runners.reports.table1 import report

    df = select_runs(collect(results / "runs" / EXPERIMENT), datasets, optimizers, args.seeds, grids(args))
    counts = df["status"].value_counts().to_dict() if len(df) else {}
    print(f"{len(df)} runs collected {counts}")
    report(df, results, sources=sources, figures=not args.no_figures)
    print(f"total wall time {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
