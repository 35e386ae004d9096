# Two commands do everything (see README): `make lab` opens the series, `make test` runs every
# test. Both create .venv on first use and install the package (editable) with its extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Extra arguments for `jupyter lab`, e.g. make lab LAB_ARGS="--port 8899 --no-browser"
LAB_ARGS ?=
# Extra arguments for `make test-shuffled`, e.g. --random-order-seed=N to repeat a run
SHUFFLE_ARGS ?=
# Jupyter refuses to run as root unless told: containers and cloud machines often are root.
ifeq ($(shell id -u 2>/dev/null),0)
ROOT_ARGS := --allow-root
endif

.PHONY: lab test test-shuffled test-fast execute student lint format bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "mnist-dissected needs Python >= 3.10; run: make PYTHON=python3.12 ...")'
	$(PYTHON) -m venv $(VENV)
	@echo "Installing PyTorch and the tools into $(VENV) (the first time: a few minutes, a few GB)"
	$(BIN)/python -m pip install --progress-bar on --editable '.[lab,test]'
	@touch $(STAMP)

## Open the notebooks in JupyterLab.
lab: $(STAMP)
	$(BIN)/jupyter lab $(ROOT_ARGS) $(LAB_ARGS) notebooks/

# The suite runs on pytest-xdist workers, one per core (at most 4: each holds a kernel and a
# model or two in memory), every notebook whole on one worker (--dist loadfile: its cells in
# order), each worker computing with one thread. Why one: on 2 cores, two workers of two threads
# each wait on each other's threads (a training step 3x slower, measured), while two of one
# thread finish the suite in about 8 minutes against 13 for one process of two threads.
WORKERS := -n auto --maxprocesses 4 --dist loadfile
test test-shuffled: export OMP_NUM_THREADS := 1

## Lint, unit tests and strict nbval of every notebook (and the 20 slowest items, to profile).
test: lint
	$(BIN)/python -m pytest $(WORKERS) --durations=20

## The same suite shuffled (modules, and tests within each; a notebook's cells keep their order)
## on the same workers: a verdict must not depend on order or load. Add the seed a run
## printed to repeat it: make test-shuffled SHUFFLE_ARGS="--random-order-seed=N"
test-shuffled: lint
	$(BIN)/python -m pytest $(WORKERS) --random-order $(SHUFFLE_ARGS)

## Lint and the unit tests, no notebooks: the fast lane (under a minute).
test-fast: lint
	$(BIN)/python -m pytest -m "not slow" -o addopts="-p no:cacheprovider" tests

## Re-execute every notebook (cores and companions) in place, top to bottom, each in a fresh
## kernel (what gets committed), then rewrite the student edition.
execute: $(STAMP)
	cd notebooks && ../$(BIN)/jupyter nbconvert --to notebook --execute --inplace \
		--ExecutePreprocessor.timeout=1200 *.ipynb further/*.ipynb
	$(BIN)/python tools/notebook_form.py notebooks/*.ipynb notebooks/further/*.ipynb
	$(BIN)/python tools/student_edition.py  # the student edition follows the notebooks

## Write the student edition into student/notebooks/: the notebooks without their solutions.
student: $(STAMP)
	$(BIN)/python tools/student_edition.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format .

## Time the data paths and the fast recipe on this machine.
bench: $(STAMP)
	$(BIN)/python -m mnist_dissected bench

clean:
	rm -rf $(VENV) data/MNIST data/checkpoints
