# Two commands do everything (see README): `make lab` opens the series, `make test` runs every
# test. Both create .venv on first use and install the package (editable) with its extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: lab test execute lint bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "mnist-dissected needs Python >= 3.10; run: make PYTHON=python3.12 ...")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --editable '.[lab,test]'
	@touch $(STAMP)

## Open the notebooks in JupyterLab.
lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

## Lint, unit tests and strict nbval of every notebook.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

## Re-execute every notebook in place, top to bottom in a fresh kernel (what gets committed).
execute: $(STAMP)
	cd notebooks && ../$(BIN)/jupyter nbconvert --to notebook --execute --inplace \
		--ExecutePreprocessor.timeout=1200 *.ipynb

lint: $(STAMP)
	$(BIN)/ruff check .

## Time the data paths and the fast recipe on this machine.
bench: $(STAMP)
	$(BIN)/python -m mnist_dissected bench

clean:
	rm -rf $(VENV) data/MNIST data/checkpoints
