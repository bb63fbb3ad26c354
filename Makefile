# Two commands do everything on a fresh machine:
#   make figures   every study at the `cpu` preset (datasets are made locally, cached in data/), its
#                  results promoted into reference/, figures/ and the README regenerated from them
#   make test      unit tests plus a `smoke` run of every script (what CI runs)
# Every target depends on the pinned virtual environment, so a fresh clone needs no other step.
#
# After `make figures`, `git status -- 'reference/*/*/metrics.csv.gz'` says whether this machine
# reproduced the committed runs bit for bit (metrics.csv.gz is written byte-stably; meta.json holds
# the wall time, so it always changes).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
README := $(PY) tests/update_readme.py
export PYTHONUNBUFFERED := 1
export TF_CPP_MIN_LOG_LEVEL := 3

SCRIPTS := exp_lr_sweep exp_dataset_size exp_activation exp_tandem exp_robustness exp_interventions
# The bsuite studies whose `long` preset runs on a 2-core CPU (measured on an AMD EPYC with AVX-512:
# activation 119.2 min at c70ddf0, lr_sweep 114.5 at 5d79bf4, tandem 41.1 at f4c395e, exp_interventions'
# memory-task study alone 57.6 at f4c395e, and exp_dataset_size's data-quality study alone 53.7 at
# 500ca6d; the README's run-times table has the current figures); the MinAtar studies' `long` presets
# are meant for a GPU:
# python exp_robustness.py --preset long
LONG    := exp_lr_sweep exp_dataset_size exp_activation exp_tandem exp_interventions
LONG_ARGS_exp_dataset_size := --studies quality
LONG_ARGS_exp_interventions := --studies memory

.PHONY: setup test unit smoke figures replicate long readme bench clean $(SCRIPTS) $(LONG:%=%-long)

setup: $(STAMP)

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements.txt
	touch $(STAMP)

# Two workers: the 2-core CI machine runs two tests at once. An idle worker takes queued tests from
# the other (worksteal), and the slowest tests start first (tests/conftest.py).
test: setup
	$(PY) -m pytest -q -n 2 --dist worksteal tests

unit: setup
	$(PY) -m pytest -q tests -m "not smoke"

smoke: setup
	$(PY) -m pytest -q tests -m smoke

# One target per script: the `cpu` run into results/<script>/, promoted into reference/, and the
# figures and README redrawn from reference/.
exp_lr_sweep: exp_lr_sweep.py setup
exp_dataset_size: exp_dataset_size.py setup
exp_activation: exp_activation.py setup
exp_tandem: exp_tandem.py setup
exp_robustness: exp_robustness.py setup
exp_interventions: exp_interventions.py setup
exp_lr_sweep exp_dataset_size exp_activation exp_tandem exp_robustness exp_interventions:
	$(PY) $@.py --preset cpu --out results/$@
	$(README) promote --preset cpu --script $@
	$(README)

# One target per figure, named as its file: make fig05 (make fig05-long) runs, promotes and redraws the
# script that draws it (figures/captions.json says which), as that script's own target does.
fig%-long: setup
	@script=$$($(README) script-of fig$*) && $(MAKE) --no-print-directory $$script-long

fig%: setup
	@script=$$($(README) script-of $@) && $(MAKE) --no-print-directory $$script

RUN_CPU = for s in $(SCRIPTS); do $(PY) $$s.py --preset cpu --out results/$$s || exit 1; done

figures: setup
	$(RUN_CPU)
	$(README) promote --preset cpu
	$(README)

# The same runs on another machine, kept beside the reference instead of replacing it: the README's
# "Verdicts on another machine" shows which verdicts they repeated. make replicate NAME=<machine>
replicate: setup
	@test -n "$(NAME)" || { echo "usage: make replicate NAME=<machine> (a name for this machine)" >&2; exit 2; }
	$(RUN_CPU)
	$(README) promote --preset cpu --replicate $(NAME)
	$(README) --no-figures

$(LONG:%=%-long): setup
	$(PY) $(@:-long=).py --preset long $(LONG_ARGS_$(@:-long=)) --out results/long/$(@:-long=)
	$(README) promote --preset long --results results/long --script $(@:-long=)
	$(README)

long: $(LONG:%=%-long)

NO_LONG := $(filter-out $(LONG),$(SCRIPTS))
$(NO_LONG:%=%-long):
	@echo "error: $(@:-long=)'s long preset is meant for a GPU and has no make target:" \
	  "python $(@:-long=).py --preset long" >&2; exit 2

# The README's tables, numbers and figures/ from reference/ alone (no training).
readme: setup
	$(README)

bench: setup
	$(PY) tests/bench.py --out results/bench
	mkdir -p reference/bench && cp results/bench/bench.json reference/bench/
	$(README) --no-figures

clean:
	rm -rf results build .pytest_cache __pycache__ tests/__pycache__
