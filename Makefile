# Two entry points that work on a fresh machine: `make demo` (the main job on the embedded model) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/adaptive-sampler

.PHONY: demo test docs lint postgres test-postgres

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch and torchvision first, pinned: on this machine pip takes them from local disk
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[all,test]'
	touch $@

# The main job: a short schedule search where search pays (DPM-Solver++(2M) at 5 steps, KID in the embedded feature
# space), from the built-in policies and the AYS table only (--no-catalogue-warm-start: not from the shipped 5-step
# list, so the win is this search's own); CMA-ES from the best warm start. It prints the learned list's held-out KID
# against uniform, the best built-in policy and AYS, exports the list and its plots, and samples a grid with it.
demo: $(VENV)/.installed
	mkdir -p runs/demo
	$(CLI) tune --model embedded --solver dpmpp-2m --steps 5 --objective kid --n 256 --heldout-n 500 --method cmaes \
	  --cmaes-sigma0 0.1 --trials 24 --no-catalogue-warm-start --storage sqlite:///runs/demo/tune.db \
	  --export runs/demo/schedules --plots runs/demo/plots
	$(CLI) sample --model embedded --solver dpmpp-2m --policy file:runs/demo/schedules/fashion-mnist/dpmpp-2m-5.json \
	  --n 64 --seed 0 --out runs/demo/grid.png --json runs/demo/sample.json

test: $(VENV)/.installed
	$(PY) -m pytest -q

# The documentation site (docs/, mkdocs.yml) into site/; --strict turns any warning (a broken link, a docstring
# that does not parse) into an error.
docs: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[docs]'
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict  # without the theme's end-of-life banner

# A throwaway PostgreSQL server (Debian's postgresql package, installed if missing when run as root; initdb and
# pg_ctl as an unprivileged user in a temp dir, unix socket only), then the scale-out test against it: three tune
# workers on one postgresql:// storage, one killed with SIGKILL mid-trial. The server is stopped afterwards.
# `make postgres` only starts one and prints `export ADAPTIVE_SAMPLER_TEST_POSTGRES=...` (stop: .ci/postgres.sh stop DIR).
postgres:
	@echo "export ADAPTIVE_SAMPLER_TEST_POSTGRES=$$(.ci/postgres.sh start)"

test-postgres: $(VENV)/.installed
	@url=$$(.ci/postgres.sh start); dir=$${url##*host=}; \
	ADAPTIVE_SAMPLER_TEST_POSTGRES=$$url ADAPTIVE_SAMPLER_CI=1 OMP_NUM_THREADS=1 \
	  $(PY) -m pytest -q tests/test_scale_out_postgres.py; rc=$$?; .ci/postgres.sh stop $$dir; exit $$rc

# Lint and import order (ruff, config in pyproject.toml), then a type check of the package (mypy).
lint: $(VENV)/.installed
	$(VENV)/bin/ruff check adaptive_sampler tests experiments
	$(VENV)/bin/mypy adaptive_sampler
