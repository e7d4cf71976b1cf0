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
# Fashion-MNIST (task=mnist): Debian's dataset-fashion-mnist the same way, into data/FashionMNIST/raw.
data: setup
	$(PY) scripts/download_data.py embedded
	$(PY) scripts/download_data.py fashion-mnist

# Table 1 (D-Adaptation Fig. 2 / Mechanic Fig. 4): every run through the runner (JOBS worker processes,
# finished runs skipped), then results/tables/table1.{md,csv,tex} and results/figures/table1_*.png.
# SEEDS=10 is the paper's protocol; LOGGER=wandb logs every run to W&B (default none).
reproduce-table1: setup data
	SEEDS=$(SEEDS) JOBS=$(JOBS) LOGGER=$(or $(LOGGER),none) $(PY) scripts/reproduce_table1.py

# Every table, one pattern each (scripts/report.py; a table's protocol: configs/table/tableN.yaml):
# `make tableN` builds results/tables/tableN.{md,csv,tex} from the runs that exist, training nothing;
# `make reproduce-tableN` first runs what is missing at SCALE (smoke: a few steps of each run, paper: the
# published protocol; scripts/reproduce_tableN.py where a table has its own planner), then builds.
# REPORT_ARGS='--from-wandb entity/project' reads the runs from W&B instead of results/.
SCALE ?= smoke
table%: setup
	$(PY) scripts/report.py table $* $(REPORT_ARGS)
reproduce-table%: setup
	SEEDS=$(SEEDS) $(PY) scripts/report.py table $* --run --scale $(SCALE) $(REPORT_ARGS)

# Every paper figure whose runs exist (Table 1's two included), PNG + PDF in results/figures/; prints
# which figures have no runs and the command that makes them. Trains nothing.
figures: setup
	$(PY) scripts/report.py figures $(REPORT_ARGS)

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
