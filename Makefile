# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create a venv in the checkout (torch 2.13.0 CPU, no torchvision) on first use.
# torch==2.13.0 is installed first on purpose: pyproject.toml allows torch>=2.3,<3, and
# resolving that bare would pull a multi-GB CUDA build.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test env clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(BIN)/flipnet demo --out demo-output

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) demo-output
