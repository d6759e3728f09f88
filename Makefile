# Two entry points that work on a fresh machine: `make demo` (the main job on the embedded model) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/adaptive-sampler

.PHONY: demo test

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch and torchvision first, pinned: on this machine pip takes them from local disk
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	mkdir -p runs/demo
	$(CLI) policies list
	$(CLI) sample --model embedded --policy uniform --steps 10 --n 64 --seed 0 \
	  --out runs/demo/grid.png --save runs/demo/samples.npy --json runs/demo/sample.json
	$(CLI) eval --model embedded --policy uniform --steps 10 --n 500 --seed 0 --json runs/demo/eval.json

test: $(VENV)/.installed
	$(PY) -m pytest -q
