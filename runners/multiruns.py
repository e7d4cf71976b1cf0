"""Many Hydra multiruns of the runner on this machine, a few at a time: how a table's script trains.

Each multirun is ``lrbench-train -m launcher=basic <overrides>`` (its groups one after the other), with
its output in its own log file. They run in processes forked from one server that has imported the
runner, torch's compiler stack (which every optimizer constructor imports) and whatever the caller
preloads, so a multirun costs its own work and not seconds of imports. Small multiruns then balance
well over the workers: pass them largest first.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import traceback
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRELOAD = ("runners.train", "torch._dynamo")


def command(overrides: Sequence[str]) -> list[str]:
    """The command line that one multirun of :func:`run` stands for (and that a user can run alone)."""
    return [sys.executable, "-m", "runners.train", "-m", "launcher=basic", *overrides]


def log_name(overrides: Sequence[str], *keys: str) -> str:
    """``<value>-<value>....log``: a multirun's log, named by the values of ``keys`` in its overrides (a
    swept value's commas as dashes)."""
    values = dict(o.partition("=")[::2] for o in overrides)
    return "-".join(values[key].replace(",", "-") for key in keys) + ".log"


def _multirun(overrides: Sequence[str], log: Path) -> int:
    """One multirun in this (forked, fresh) process, stdout and stderr into ``log``; its exit code."""
    os.chdir(REPO)
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    with log.open("a") as f:
        f.write("+ " + " ".join(command(overrides)) + "\n")
        f.flush()
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        from runners.train import main

        sys.argv = ["lrbench-train", "-m", "launcher=basic", *overrides]
        try:
            main()
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except Exception:  # as a process of its own would: the traceback in its log, exit code 1
            traceback.print_exc()
            return 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
    return 0


def server(preload: Sequence[str] = ()) -> multiprocessing.context.ForkServerContext:
    """The context whose processes fork from a server that imported :data:`PRELOAD` and ``preload``
    (one server per Python process: the first call's modules are the ones it has). The server also runs
    the calling script's module-level code, which each process would otherwise run again."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["__main__", *PRELOAD, *preload])
    return ctx


def _process(overrides: Sequence[str], log: Path) -> None:
    sys.exit(_multirun(overrides, log))


def run(multiruns: Sequence[tuple[Sequence[str], Path]], jobs: int, preload: Sequence[str] = ()) -> list[int]:
    """Each ``(overrides, log)`` in a process of its own, up to ``jobs`` at once in the given order; their
    exit codes. Each log starts with its multirun's command line."""
    ctx = server(preload)

    def one(job: tuple[Sequence[str], Path]) -> int:
        process = ctx.Process(target=_process, args=(list(job[0]), job[1]))
        process.start()
        process.join()
        return int(process.exitcode or 0)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        return list(pool.map(one, multiruns))
