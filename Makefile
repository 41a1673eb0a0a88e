# pibench set-up: `make demo` runs the digits demo, `make test` runs the tests.
# Both create/update .venv through `make install`; `make install EXTRAS=test,spu` adds the
# SecretFlow SPU backend (resolved in the same pip call as everything else: spu needs numpy<2).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= test
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
comma := ,
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: install demo test test-all test-slurm bench clean

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

test: install
	$(VENV)/bin/pytest -q

test-all: install
	$(VENV)/bin/pytest -q --runslow

# root: starts a one-node Slurm cluster (tests/slurm/cluster.sh install first)
test-slurm: install
	$(VENV)/bin/pytest -q --runslurm -m slurm

bench: install
	$(VENV)/bin/pytest -q -s benchmarks --benchmark-only

clean:
	rm -rf $(VENV)
