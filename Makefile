# The two commands a newcomer needs: `make demo` and `make test`. Both create .venv on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/scifact
export DATA

.PHONY: demo test bench venv clean lint

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch is pinned to the CPU wheel on disk; installing it first keeps pip from pulling a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[export,test]'
	touch $@

venv: $(BIN)/.installed

test: venv
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

demo: venv
	$(BIN)/abgate demo --data $(DATA) $(DEMO_ARGS)

bench: venv
	$(BIN)/python bench/run_all.py --data $(DATA) $(BENCH_ARGS)

clean:
	rm -rf $(VENV) artifacts .abgate tests/artifacts
