"""Bad input: one-line errors naming the key (exit 2), Hydra's option list, missing data, sweeps."""

from __future__ import annotations

import json

import pytest
from hydra.errors import MissingConfigException

from tasks.base import DatasetMissingError, Task, register_task
from tests.runners.helpers import cli_run, compose_cfg, run_inproc, summaries


@register_task("missing_data_fixture")
class MissingData(Task):
    """A task whose data are not there (test fixture)."""

    epochs = 1

    def __init__(self, *, seed, device="cpu", **_):
        raise DatasetMissingError(
            "LIBSVM file glass.scale", "data/libsvm/glass.scale", "python scripts/download_data.py libsvm"
        )

    build_model = steps_per_epoch = train_batches = loss = evaluate = data_source = None


def test_invalid_value_is_one_line_and_full_traceback_on_request(tmp_path):
    code, out, err = cli_run(tmp_path, "logger=none", "optimizer=sgd", "optimizer.lr=-1")
    assert code == 2
    assert err == "error: optimizer.lr: must be >= 0, got -1\n"
    assert not (tmp_path / "results" / "runs").exists()
    code, out, err = cli_run(
        tmp_path, "logger=none", "optimizer=sgd", "optimizer.lr=-1", env={"HYDRA_FULL_ERROR": "1"}
    )
    assert code != 0 and "Traceback" in err and "ConfigError: optimizer.lr: must be >= 0, got -1" in err


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (["seed=abc"], "seed: expected an int, got 'abc'"),
        (
            ["optimizer=adam", "optimizer.betas=[0.9]"],
            "optimizer.betas: expected a list of 2 floats, got [0.9]",
        ),
        (["+task.foo=1"], "task.foo: unknown key; the keys are batch_size, epochs, name, objective"),
        (
            ["optimizer=dadapt_sgd", "optimizer.momentum=1.5"],
            "optimizer.momentum: must be in [0, 1), got 1.5",
        ),
        (
            ["optimizer=mechanic_sgd", "optimizer.base.lr=abc"],
            "optimizer.base.lr: expected a float, got 'abc'",
        ),
    ],
    ids=["type", "length", "unknown-key", "range", "nested"],
)
def test_schema_error_is_one_line_at_the_command_line(tmp_path, overrides, line):
    code, out, err = cli_run(tmp_path, "logger=none", *overrides)
    assert (code, err) == (2, f"error: {line}\n")
    assert not (tmp_path / "results" / "runs").exists()


def test_unknown_key_without_plus_is_hydras_message_without_traceback(tmp_path):
    code, out, err = cli_run(tmp_path, "logger=none", "optimizer.lrr=1")
    assert code == 1
    assert "Could not override 'optimizer.lrr'" in err and "+optimizer.lrr=1" in err
    assert "Traceback" not in err


def test_unknown_optimizer_lists_hydra_options(tmp_path):
    code, out, err = cli_run(tmp_path, "logger=none", "optimizer=nope")
    assert code == 1
    assert "Could not find 'optimizer/nope'" in err
    assert "Available options in 'optimizer':" in err and "\tsgd\n" in err and "\tadam\n" in err
    assert "Traceback" not in err


def test_unknown_task_lists_hydra_options(tmp_path):
    with pytest.raises(MissingConfigException, match=r"Could not find 'task/nope'") as info:
        compose_cfg(tmp_path, "task=nope")
    assert "toy" in info.value.options


def test_invalid_task_value_names_the_key(tmp_path, capsys):
    code, _ = run_inproc(tmp_path, "task.batch_size=0")
    assert code == 2
    assert (
        capsys.readouterr().err.strip() == "error: task.batch_size: batch_size must be an integer >= 1, got 0"
    )


def test_missing_dataset_names_path_and_fetch_command(tmp_path, capsys):
    code, _ = run_inproc(tmp_path, "task.name=missing_data_fixture")
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "error: task: LIBSVM file glass.scale not found at data/libsvm/glass.scale. "
        "Fetch it with: python scripts/download_data.py libsvm"
    )


def test_failing_and_diverging_members_do_not_stop_a_joblib_sweep(tmp_path):
    code, out, err = cli_run(
        tmp_path,
        "-m",
        "launcher=joblib",
        "hydra.launcher.n_jobs=2",
        "logger=none",
        "task.objective=mse",
        "optimizer.lr=-1,1e6,0.1",
        "max_steps=40",
        "log_every_steps=1",
    )
    assert code == 0, err
    assert "error: optimizer.lr: must be >= 0, got -1" in err
    by_lr = {}
    for s in summaries(tmp_path / "results"):
        cfg = (tmp_path / "results" / "runs" / "adhoc" / s["run_id"] / "config.yaml").read_text()
        by_lr[next(line for line in cfg.splitlines() if line.startswith("  lr:"))] = s
    assert {k: v["status"] for k, v in by_lr.items()} == {
        "  lr: -1": "failed",
        "  lr: 1000000.0": "diverged",
        "  lr: 0.1": "completed",
    }
    assert by_lr["  lr: -1"]["error"] == "optimizer.lr: must be >= 0, got -1"
    assert by_lr["  lr: 0.1"]["steps"] == 40
    assert (
        json.dumps(by_lr["  lr: 1000000.0"]["final"]).count("Infinity")
        + json.dumps(by_lr["  lr: 1000000.0"]["final"]).count("NaN")
        >= 1
    )
