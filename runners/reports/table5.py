"""Table 5, optimizer overhead (MetaOptimize Table 1, MO-6), from ``benchmarks/table5_overhead.py``'s file.

Per model and optimizer: time overhead = per interleaved round (T_alg / T_AdamW − 1), mean ± SE over
rounds; memory overhead = memory / AdamW's − 1 with the measure the file states (GPU: peak allocated in
one iteration; CPU: parameters + gradients + optimizer state). The paper's numbers
(``metaoptimize_table1_overhead.csv``) beside ours; the protocol is ``configs/table/table5.yaml``. Only a
paper-size measurement (``--paper-size``, a GPU) is judged; a reduced CPU one is shown as ``not run``
with that command.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from runners.reports import paper, render, rows, scoring

NAME = "table5"


def _paper(model: str, label: str, metric: str) -> float:
    csv = paper.read("metaoptimize_table1_overhead.csv")
    hit = csv[(csv["model"] == model) & (csv["optimizer"] == label) & (csv["metric"] == metric)]
    return float(hit["value"].iloc[0]) if len(hit) else math.nan


def build(bench: pd.DataFrame | None) -> pd.DataFrame:
    """Table 5 from the benchmark's records (None: every cell ``not run`` with the command)."""
    proto = rows.protocol(NAME)
    base, tol = proto["baseline"], float(proto["tolerance"])
    lines = []
    for model, spec in proto["models"].items():
        mine = bench[bench["model"] == model].set_index("optimizer") if bench is not None else pd.DataFrame()
        labels = list(mine.index) + [k for k in proto["paper_labels"] if k not in mine.index]
        ref = mine.loc[base] if base in mine.index else None
        for opt in labels:
            label = proto["paper_labels"].get(opt, "")
            p_time = _paper(spec["paper_model"], label, "time_overhead_vs_adamw")
            p_mem = _paper(spec["paper_model"], label, "gpu_memory_overhead_vs_adamw")
            line = {"model": spec["label"], "optimizer": opt + (f" ({label})" if label else "")}
            r = mine.loc[opt] if opt in mine.index else None
            ok = r is not None and ref is not None and isinstance(r.get("seconds"), list) and r["seconds"]
            if ok:
                ratio = 100 * (np.asarray(r["seconds"]) / np.asarray(ref["seconds"]) - 1)
                stats = scoring.SeedStats.of(ratio)
                mem = round(100 * (r["memory_bytes"] / ref["memory_bytes"] - 1)) + 0.0  # no "-0"
                line["time ours"] = f"{stats.mean:+.0f} ± {stats.se:.1f} (n={stats.n})"
                line["memory ours"] = f"{mem:+.0f}"
                line["verdict (time)"] = scoring.verdict(stats, p_time, math.nan, tol)
                line["measured"] = (
                    f"{r['device']}, batch {r['batch']} x {r['size']}, memory: {r['memory_measure']}"
                )
                if r.get("sizes") != "paper" and line["verdict (time)"] != "no paper value":
                    # a CPU at a reduced size is not the paper's measurement: shown, not judged
                    line["verdict (time)"] = "not run"
                    gpu = scoring.not_run("paper size needs a GPU", f"{proto['command']} --paper-size")
                    line["measured"] += f"; {gpu}"
            else:
                why = (
                    "not in the suite" if opt not in mine.index and bench is not None else "no benchmark file"
                )
                if r is not None and isinstance(r.get("error"), str):
                    why = f"did not build: {r['error']}"
                line.update({"time ours": "not run", "memory ours": "not run", "verdict (time)": "not run"})
                line["measured"] = scoring.not_run(why, proto["command"])
            line["time paper"] = scoring.paper_text(p_time, digits=0)
            line["memory paper"] = scoring.paper_text(p_mem, digits=1)
            lines.append(line)
    cols = ["model", "optimizer", "time ours", "time paper", "verdict (time)", "memory ours", "memory paper"]
    return pd.DataFrame(lines, columns=[*cols, "measured"])


def load(path: str | Path | None = None) -> pd.DataFrame | None:
    """The benchmark's records, or None when it has not run."""
    path = Path(path or rows.protocol(NAME)["benchmark"])
    return pd.read_json(path, orient="records") if path.is_file() else None


def report(out: str | Path = "results", bench_path: str | Path | None = None) -> pd.DataFrame:
    default = Path(out) / "benchmarks" / "table5_overhead.json"
    table = build(load(bench_path or default))
    render.render(table, NAME, out, title=rows.protocol(NAME)["title"], drop=["measured"])
    return table
