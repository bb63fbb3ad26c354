# Two commands do everything on a fresh machine:
#   make figures   every paper figure at the `cpu` preset (datasets are made locally, cached in data/)
#   make test      unit tests plus a `smoke` run of every script (what CI runs)
# Every target depends on the pinned virtual environment, so a fresh clone needs no other step.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Quiet XLA's CPU warnings; keep one process from grabbing both cores' worth of threads twice.
export PYTHONUNBUFFERED := 1
export TF_CPP_MIN_LOG_LEVEL := 3

SCRIPTS := exp_lr_sweep.py exp_dataset_size.py exp_activation.py exp_tandem.py exp_robustness.py exp_interventions.py
TARGETS := $(SCRIPTS:.py=)

.PHONY: setup test unit smoke figures bench clean $(TARGETS)

setup: $(STAMP)

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.txt
	touch $(STAMP)

# Two workers: the 2-core CI machine compiles two scripts' programs at once.
test: setup
	$(PY) -m pytest -q -n 2 tests

unit: setup
	$(PY) -m pytest -q tests -m "not smoke"

smoke: setup
	$(PY) -m pytest -q tests -m smoke

# One target per script; each writes results/<script>/ and copies its PNGs (and any Markdown
# tables) into figures/, which the README shows.
$(TARGETS): setup
	$(PY) $@.py --preset cpu
	mkdir -p figures && cp results/$@/fig*.png figures/
	for t in results/$@/table*.md; do if [ -e "$$t" ]; then cp "$$t" figures/; fi; done

figures: $(TARGETS)
	$(PY) tests/update_readme.py --claims

bench: setup
	$(PY) tests/bench.py --out results/bench
	$(PY) tests/update_readme.py --bench

clean:
	rm -rf results .pytest_cache __pycache__ tests/__pycache__
