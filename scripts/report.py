"""``make tableN`` / ``make reproduce-tableN`` / ``make figures``: the suite's tables and figures.

    python scripts/report.py table 2                       # build Table 2 from the runs that exist
    python scripts/report.py table 2 --run --scale smoke   # first run what is missing (runner), then build
    python scripts/report.py table 5 --run                 # Table 5: run the overhead benchmark, then build
    python scripts/report.py figures                       # every paper figure whose runs exist
    python scripts/report.py table 3 --from-wandb entity/project   # the same rows from W&B

A table with its own planner, ``scripts/reproduce_tableN.py`` (Table 1), runs through it. Tables 2-4
read their protocol from ``configs/table/tableN.yaml``: ``--run`` starts, per protocol row and
optimizer, one Hydra multirun of the runner over the row's seeds (and the baseline's LR grid) with
``scale=<SCALE>``; the runner skips finished runs. Rows that cannot run here (no experiment config
yet, no data, a GPU needed at paper scale) are left to the table's ``not run`` cells, which name the
command.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from importlib import import_module
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runners.reports import rows as table_rows  # noqa: E402
from runners.reports import runs  # noqa: E402


def multiruns(proto: dict, seeds: int, scale: str, results: Path, here: bool = True) -> list[list[str]]:
    """The runner commands (override lists) of every runnable protocol row. ``here``: the runs are for
    this machine, so rows whose data is absent, or that need a GPU at paper scale without one, are left
    out (a cluster is assumed to have both)."""
    cmds = []
    for row in proto["rows"]:
        if row.get("why"):  # a row that cannot hold runs yet says so in its cells
            continue
        configs = table_rows._experiment_configs(row["experiment"])
        data = Path(os.environ.get("LRBENCH_DATA", REPO / "data")) / str(row.get("data", ""))
        if here and row.get("data") and not data.exists():
            continue
        if here and scale == "paper" and row.get("needs") == "gpu":
            import torch

            if not torch.cuda.is_available():
                continue
        for key in row["optimizers"]:
            exps = [key] if row.get("by") == "experiment" else configs
            for exp in exps:
                cmd = [f"experiment={exp}", f"scale={scale}", f"results_dir={results}", "launcher=basic"]
                cmd += [f"seed={','.join(map(str, range(seeds)))}", *(["torch_threads=1"] if here else [])]
                if row.get("by") != "experiment":
                    cmd.append(f"optimizer={key}")
                if row.get("dataset"):
                    cmd.append(f"task.dataset={row['dataset']}")
                if key == row.get("baseline") and row.get("grid"):
                    cmd.append(f"optimizer.lr={','.join(repr(float(v)) for v in row['grid'])}")
                if row.get("lr") is not None:
                    cmd.append(f"optimizer.lr={float(row['lr'])!r}")
                if cmd not in cmds:
                    cmds.append(cmd)
    return cmds


def protocols() -> list[dict]:
    """Tables 2-3's protocols (Table 4 plans its own runs: scripts/reproduce_table4.py)."""
    return [table_rows.protocol(f"table{n}") for n in (2, 3)]


class TablePlanner:
    """``scripts/sweep.py``'s planner of one experiment a table protocol names (``make sweep
    EXPERIMENT=mechanic_m3``): its rows' multiruns, without the experiment and launcher overrides."""

    def __init__(self, experiment: str, rows: list[dict]) -> None:
        self.experiment, self.rows = experiment, rows

    def build_parser(self) -> argparse.ArgumentParser:
        ap = argparse.ArgumentParser(description=f"the table rows of experiment {self.experiment}")
        ap.add_argument("--seeds", type=int, default=int(os.environ.get("SEEDS", 3)))
        ap.add_argument("--scale", default=os.environ.get("SCALE", "paper"), choices=["smoke", "paper"])
        ap.add_argument("--results", default=os.environ.get("LRBENCH_RESULTS", "results"))
        ap.add_argument("overrides", nargs="*", help="extra runner overrides")
        return ap

    def sweeps(self, args: argparse.Namespace, local: bool = True) -> tuple[list[list[str]], dict, list[str]]:
        results = Path(args.results).resolve()
        cmds = multiruns({"rows": self.rows}, args.seeds, args.scale, results, here=local)
        mine = [c for c in cmds if c[0] == f"experiment={self.experiment}"]
        keep = [
            [o for o in c if not o.startswith(("experiment=", "launcher="))] + args.overrides for c in mine
        ]
        notes = [] if keep else [f"not run: no runnable row of {self.experiment} here"]
        return keep, {}, notes


def table_planner(experiment: str) -> TablePlanner | None:
    """The planner of ``experiment`` when a table's rows name it (its config must exist), else None."""
    if not (REPO / "configs" / "experiment" / f"{experiment}.yaml").is_file():
        return None
    rows = [
        r
        for proto in protocols()
        for r in proto["rows"]
        if experiment in r["optimizers"]
        or (r.get("by") != "experiment" and experiment.startswith(r["experiment"]))
    ]
    return TablePlanner(experiment, rows) if rows else None


def run_missing(n: int, args: argparse.Namespace, results: Path) -> None:
    if n == 5:
        size = ["--paper-size"] if args.scale == "paper" else []
        out = results / "benchmarks" / "table5_overhead.json"
        subprocess.run(
            [sys.executable, "-m", "benchmarks.table5_overhead", *size, "--out", str(out)], cwd=REPO
        )
        return
    proto = table_rows.protocol(f"table{n}")
    seeds = int(args.seeds or proto.get("seeds", 3))
    for cmd in multiruns(proto if proto.get("rows") else {"rows": []}, seeds, args.scale, results):
        print("+ python -m runners.train -m " + " ".join(cmd), flush=True)
        subprocess.run([sys.executable, "-m", "runners.train", "-m", *cmd], cwd=REPO)


def table(n: int, args: argparse.Namespace) -> int:
    results = Path(args.results).resolve()
    planner = REPO / "scripts" / f"reproduce_table{n}.py"  # a table with its own planner runs through it
    if args.run and planner.is_file():
        env = {**os.environ, "SCALE": args.scale, **({"SEEDS": str(args.seeds)} if args.seeds else {})}
        subprocess.run([sys.executable, str(planner), "--results", str(results)], cwd=REPO, env=env)
    elif args.run:
        run_missing(n, args, results)
    if n == 1 and not args.from_wandb:
        from scripts import reproduce_table1

        return reproduce_table1.main(["--report-only", "--results", str(results), "--no-figures"])
    if n == 5:
        import_module("runners.reports.table5").report(results)
        return 0
    if n == 4:  # its own form: the authors' logged curves beside ours (runners/reports/table4.py)
        import_module("runners.reports.table4").report(results, figures_too=False)
        return 0
    df = runs.load(results, args.from_wandb)
    module = import_module(f"runners.reports.table{n}")
    if n == 1:
        module.report(runs.select(df, module.protocol()["experiment"]), results, figures=False)
    else:
        module.report(df, results)
    return 0


def figures(args: argparse.Namespace) -> int:
    from runners.reports import figures as paper_figures

    results = Path(args.results).resolve()
    df = runs.load(results, args.from_wandb)
    if not args.from_wandb:  # Table 1's own two figures, from its selection of runs
        from scripts import reproduce_table1

        reproduce_table1.main(["--report-only", "--results", str(results)])
    written, missing = paper_figures.make_all(df, results)
    for path in written:
        print(f"written: {path}")
    for line in missing:
        print(f"missing: {line}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["table", "figures"])
    ap.add_argument("number", nargs="?", type=int, choices=range(1, 6))
    ap.add_argument("--run", action="store_true", help="run what is missing first")
    ap.add_argument("--scale", default=os.environ.get("SCALE", "smoke"), choices=["smoke", "paper"])
    ap.add_argument("--seeds", type=int, default=None, help="default: the protocol's")
    ap.add_argument("--results", default=os.environ.get("LRBENCH_RESULTS", "results"))
    ap.add_argument("--from-wandb", default=None, metavar="ENTITY/PROJECT", help="read runs from W&B")
    args = ap.parse_args(argv)
    if args.what == "table":
        if args.number is None:
            ap.error("table needs its number, 1-5")
        return table(args.number, args)
    return figures(args)


if __name__ == "__main__":
    sys.exit(main())
