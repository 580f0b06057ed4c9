# The two commands a newcomer needs: `make demo` and `make test`. Both create .venv on a fresh machine;
# `make test` also installs chromium for the browser test when it may (see test-deps).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/scifact
export DATA

.PHONY: demo test test-deps bench venv clean lint

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch is pinned to the CPU wheel on disk; installing it first keeps pip from pulling a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[export,test]'
	touch $@

venv: $(BIN)/.installed

# The browser test needs Debian's chromium and chromedriver. They are installed here when missing and we may
# (root, or passwordless sudo); otherwise this says why, and the test skips with that reason (CI=true: fails).
test-deps:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then as=""; \
	elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then as="sudo -n"; \
	else echo "make test: chromium/chromedriver are missing and installing them needs root or passwordless sudo;" \
	  "run 'sudo apt-get install -y chromium chromium-driver' (the browser test is skipped until then)" >&2; exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then echo "make test: chromium/chromedriver are missing and there is no" \
	  "apt-get: install them with this system's package manager (the browser test is skipped until then)" >&2; exit 0; fi; \
	echo "make test: installing chromium and chromium-driver with apt-get" >&2; \
	{ $$as env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  $$as env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } || \
	echo "make test: apt-get could not install chromium (see above); the browser test is skipped" >&2

test: venv test-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

# FULL=1: the two-pass fine-tune (in-batch, then mined hard negatives), about twice the fine-tuning time.
demo: venv
	$(BIN)/abgate demo --data $(DATA) $(if $(FULL),--full) $(DEMO_ARGS)

# The improvement loop, end to end: simulated users click on SciFact train queries through the gateway (baseline vs
# its 128-dimension Matryoshka index), harvest (IPS and naive), finetune --pairs, export, index, NDCG@10 on test.
# Reuses artifacts/ (e.g. the demo's baseline); LOOP_ARGS='--users N --fresh-traffic ...'. See docs/loop.md.
.PHONY: loop
loop: venv
	$(BIN)/abgate loop --data $(DATA) $(LOOP_ARGS)

bench: venv
	$(BIN)/python bench/run_all.py --data $(DATA) $(BENCH_ARGS)

# Deploy files (hadolint, kubernetes-validate on the kustomize output, checkov) and the import-order contract.
lint: venv
	bash deploy/check.sh
	$(BIN)/lint-imports --no-cache

clean:
	rm -rf $(VENV) artifacts .abgate tests/artifacts
