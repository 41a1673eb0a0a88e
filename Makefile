# pibench set-up: `make demo` runs the digits demo, `make test` runs the tests.
# `make test-fast` runs only the quick ones (under a minute). All create/update .venv through `make install`;
# `make install EXTRAS=test,spu` adds the
# SecretFlow SPU backend (resolved in the same pip call as everything else: spu needs numpy<2).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= test
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

PYTEST_ARGS ?=

.PHONY: install demo test test-fast test-all test-slurm lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	# crypten 0.4.1 declares the dead `sklearn` package and torchvision: install it
	# without its metadata deps; its real runtime needs are listed in pyproject.toml.
	# pip would then report crypten's unmet declared deps (sklearn, tensorboard,
	# torchvision, future) as a red ERROR after every install: expected, so not shown.
	$(PIP) install -q --no-deps crypten==0.4.1
	$(PIP) install -q --no-warn-conflicts -e ".[$(EXTRAS)]"
	rm -f $(VENV)/.installed*
	touch $(STAMP)

demo: install
	$(VENV)/bin/pibench demo

# Tiers by marker (tests/conftest.py says which test gets which): test-fast (no party processes, no other
# processes, training runs, figures or docs examples: under a minute), test (adds the `parties` and
# `integration` tests), test-all (adds the `slow` digits pipeline).
test-fast: install
	$(VENV)/bin/pytest -q -m "not parties and not slow and not integration" $(PYTEST_ARGS)

test: install
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

test-all: install
	$(VENV)/bin/pytest -q --runslow $(PYTEST_ARGS)

# the layers contract ([tool.importlinter] in pyproject.toml, docs/architecture.md)
lint: install
	$(VENV)/bin/lint-imports --no-cache

# root: starts a one-node Slurm cluster (tests/slurm/cluster.sh install first)
test-slurm: install
	$(VENV)/bin/pytest -q --runslurm -m slurm

bench: install
	$(VENV)/bin/pytest -q -s benchmarks --benchmark-only

clean:
	rm -rf $(VENV)
