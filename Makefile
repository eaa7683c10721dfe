# Two commands work on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench models venv clean

$(STAMP): requirements.txt requirements-test.txt pyproject.toml
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -r requirements-test.txt
	$(VPY) -m pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

$(VENV)/.train: $(STAMP) requirements-train.txt
	$(VPY) -m pip install -q -r requirements-train.txt
	touch $(VENV)/.train

demo: $(STAMP)
	$(VPY) -m xmm_enhance.demo --outdir demo_output

test: $(STAMP)
	MPLBACKEND=Agg $(VPY) -m pytest -q

bench: $(STAMP)
	$(VPY) benchmarks/bench_inference.py
	$(VPY) benchmarks/bench_image.py

# Retrain both networks from scratch (fresh checkpoints in runs/checkpoints, so the committed
# resumable ones in models/checkpoints are left alone) with the final recipes: DN 7000 steps
# (~1 h on 2 CPU cores), SR 24000 steps (~2.5 h); see models/MODEL_CARD.md. Exports to models/.
TRAIN := $(VPY) -m xmm_enhance.training.train --fresh --ckpt-dir runs/checkpoints --out models/
models: $(VENV)/.train
	$(TRAIN) --task DN --total-steps 10000 --steps 7000
	$(TRAIN) --task SR --total-steps 24000 --steps 24000

clean:
	rm -rf demo_output .pytest_cache
