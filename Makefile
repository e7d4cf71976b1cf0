# lrbench: every set-up step lives here. `make reproduce-table1` and `make test` work on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SEEDS ?= 3
JOBS ?= 2

.PHONY: setup test lint data reproduce-table1 reproduce-table4 figures sweep sweep-status slurm-start slurm-status slurm-stop bench clean

setup: $(STAMP)

# Re-installs only when pyproject.toml changes; a no-op otherwise.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

test: setup data
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# Table 1 data: Debian's r-cran-mlbench (apt-get download + dpkg-deb -x into data/mlbench, no R) for Glass,
# Vehicle, Vowel, DNA and Letter; Iris and Wine ship with scikit-learn. Without apt it prints which sets are
# missing and exits 0. LIBSVM's own files (all 12 problems): $(PY) scripts/download_data.py libsvm
data: setup
	$(PY) scripts/download_data.py embedded

# Table 1 (D-Adaptation Fig. 2 / Mechanic Fig. 4): every run through the runner (joblib, JOBS workers,
# finished runs skipped), then results/tables/table1.{md,csv,tex} and results/figures/table1_*.png.
# SEEDS=10 is the paper's protocol; LOGGER=wandb logs every run to W&B (default none).
reproduce-table1: setup data
	SEEDS=$(SEEDS) JOBS=$(JOBS) LOGGER=$(or $(LOGGER),none) $(PY) scripts/reproduce_table1.py

# Table 4 (MetaOptimize MO-3, non-stationary CIFAR-100): every method x SEEDS seeds on whatever data exists
# (CIFAR-100; Fashion-MNIST as a labelled substitute), then results/tables/table4.{md,csv,tex} and
# results/figures/continual_*.png. Resumable; SEEDS=5 is the paper's protocol.
reproduce-table4: setup
	SEEDS=$(SEEDS) JOBS=$(JOBS) LOGGER=$(or $(LOGGER),none) $(PY) scripts/reproduce_table4.py

# Re-make Table 1 and its figures from the finished runs, training nothing.
figures: setup
	$(PY) scripts/reproduce_table1.py --report-only

# A paper table's runs on a cluster: `make sweep EXPERIMENT=dadapt_figure2 LAUNCHER=slurm` submits every run
# the results store does not hold as finished (SLURM job arrays; LAUNCHER=joblib runs them here), prints the
# job ids and where results land. SWEEP_ARGS: the table script's options and runner overrides, e.g.
# SWEEP_ARGS='--seeds 10 hydra.launcher.partition=gpu hydra.launcher.time=2:00:00'.
EXPERIMENT ?= dadapt_figure2
LAUNCHER ?= slurm
sweep: setup
	$(PY) scripts/sweep.py submit $(EXPERIMENT) --launcher $(LAUNCHER) --seeds $(SEEDS) $(SWEEP_ARGS)

# completed / running / failed / diverged / missing counts of the same plan (results store + squeue)
sweep-status: setup
	$(PY) scripts/sweep.py status $(EXPERIMENT) --seeds $(SEEDS) $(SWEEP_ARGS)

# A one-node SLURM on this machine (root; installs Debian's packages on first use): the `slurm` tests' cluster.
slurm-start:
	scripts/slurm/cluster.sh start
slurm-status:
	scripts/slurm/cluster.sh status
slurm-stop:
	scripts/slurm/cluster.sh stop
