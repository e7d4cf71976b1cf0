"""Table 4 end to end (MetaOptimize MO-3, non-stationary CIFAR-100): every run through the runner, then the
table and figures.

    python scripts/reproduce_table4.py                  # 5 seeds, every method, on whatever data exists
    SEEDS=2 JOBS=2 python scripts/reproduce_table4.py --methods metaoptimize_blocks,fixed
    python scripts/reproduce_table4.py --report-only    # re-make table + figures from finished runs
    SCALE=smoke python scripts/reproduce_table4.py      # a few steps of each run (make reproduce-table4)

A thin driver of ``configs/table/table4.yaml`` (datasets, seeds, one experiment per method, AdamW's lr
grid). CIFAR-100 runs where its files are under the data root; Fashion-MNIST (5 tasks of 2 classes) runs
as a labelled substitute where its files are. Each (dataset, method) is one Hydra multirun of
``runners.train`` over the seeds (and the grid), one run per process on one thread (a batch-1 step gains
nothing from a second thread); up to ``JOBS`` multiruns at once. Finished runs are skipped, so a rerun only
does what is missing.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runners import multiruns  # noqa: E402
from runners.reports.table4 import AUTHORS_FILE, protocol, report  # noqa: E402
from tasks import DatasetMissingError  # noqa: E402
from tasks.continual_cifar100 import DATASETS, load_split  # noqa: E402

PROTOCOL = protocol()


def available(data: Path) -> dict[str, str | None]:
    """Per dataset: None where both splits load, else the one line saying what is missing."""
    out: dict[str, str | None] = {}
    for dataset in PROTOCOL["datasets"]:
        try:
            for train in (False, True):
                load_split(dataset, data, train)
            out[dataset] = None
        except DatasetMissingError as exc:
            out[dataset] = f"not run: {DATASETS[dataset].label}: {exc}"
    return out


def sweeps(args: argparse.Namespace, datasets: list[str]) -> list[list[str]]:
    """One multirun's overrides per (dataset, method)."""
    data = Path(args.data).resolve()
    common = [
        f"results_dir={Path(args.results).resolve()}",
        *([] if data == REPO / "data" else [f"task.root={data}"]),
        f"logger={args.logger}",
        f"scale={args.scale}",
        f"seed={','.join(str(s) for s in range(args.seeds))}",
        "torch_threads=1",
        "progress=false",
        *args.overrides,
    ]
    runs = []
    for dataset in datasets:
        for method in args.methods.split(","):
            spec = PROTOCOL["methods"][method]
            grid = (
                [f"optimizer.lr={','.join(repr(float(v)) for v in spec['grid'])}"] if spec.get("grid") else []
            )
            runs.append(
                [f"experiment={spec['experiment']}", f"{PROTOCOL['task_key']}={dataset}", *common, *grid]
            )
    return runs


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=int(os.environ.get("SEEDS", PROTOCOL["seeds"])))
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("JOBS", os.cpu_count() or 1)))
    ap.add_argument("--methods", default=",".join(PROTOCOL["methods"]), help="comma list (default: all)")
    ap.add_argument("--logger", default=os.environ.get("LOGGER", "none"))
    ap.add_argument(  # make reproduce-table4 passes SCALE, as for every table
        "--scale",
        default=os.environ.get("SCALE", "paper"),
        choices=["smoke", "paper"],
        help="smoke: a few steps of each run (a pipeline check); paper: the protocol (default)",
    )
    ap.add_argument("--results", default=os.environ.get("LRBENCH_RESULTS", "results"))
    ap.add_argument("--data", default=os.environ.get("LRBENCH_DATA", "data"))
    ap.add_argument("--report-only", action="store_true", help="skip training; table + figures only")
    ap.add_argument("--no-figures", action="store_true")
    ap.add_argument("overrides", nargs="*", help="extra runner overrides")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unknown = sorted(set(args.methods.split(",")) - set(PROTOCOL["methods"]))
    if unknown:
        raise SystemExit(f"error: --methods: {unknown} not in {sorted(PROTOCOL['methods'])}")
    if not AUTHORS_FILE.is_file():
        raise SystemExit(f"error: the report needs {AUTHORS_FILE}, which ships with lrbench (git checkout)")
    missing = available(Path(args.data))
    for line in filter(None, missing.values()):
        print(line)
    datasets = [d for d, why in missing.items() if why is None]
    t0 = time.monotonic()
    if not args.report_only and datasets:
        logs = Path(args.results) / "logs" / "table4"
        logs.mkdir(parents=True, exist_ok=True)
        runs = sweeps(args, datasets)
        print(f"{len(runs)} multiruns of the runner, {args.jobs} at a time (commands and output: {logs}/)")
        jobs = [(o, logs / multiruns.log_name(o, "experiment", PROTOCOL["task_key"])) for o in runs]
        multiruns.run(jobs, args.jobs, preload=["tasks.continual_cifar100"])
        print(f"runs done in {time.monotonic() - t0:.0f} s (logs: {logs}/)")
    report(Path(args.results).resolve(), figures_too=not args.no_figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
