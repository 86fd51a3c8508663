# logstore — every target goes through an idempotent `make install`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
PYTHON  := $(BIN)/python
STAMP   := $(VENV)/.installed
PROTOS  := $(wildcard proto/logstore/v1/*.proto)
# one generated module per .proto, derived (a hand list missed new files)
GEN     := $(patsubst proto/%.proto,%_pb2.py,$(PROTOS))
NODE_STAMP := node_modules/.installed

.PHONY: install proto run test lint bench bench-compare clean

install: $(STAMP) $(GEN) $(NODE_STAMP)

$(STAMP): pyproject.toml
	test -x $(PYTHON) || $(PY) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e '.[dev]'
	touch $@

proto: $(STAMP)
	rm -f $(GEN)
	$(MAKE) $(GEN)

$(GEN): $(PROTOS) $(STAMP)
	mkdir -p logstore/v1
	$(PYTHON) -m grpc_tools.protoc -Iproto \
	  --python_out=. --pyi_out=. --grpc_python_out=. \
	  $(PROTOS)
	touch logstore/v1/__init__.py logstore/v1/py.typed
	touch $(GEN)

$(NODE_STAMP): package.json package-lock.json $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/npm ci --no-audit --no-fund --loglevel=error
	touch $@

run: install
	$(BIN)/logctl serve

test: install lint
	$(BIN)/pytest -q

lint: install
	$(BIN)/ruff check logstore cli tests benchmarks examples
	$(BIN)/ruff format --check logstore cli tests benchmarks examples
	$(BIN)/mypy logstore cli examples

bench: install
	$(PYTHON) -m benchmarks.run --quick

bench-compare: install
	$(PYTHON) -m benchmarks.install_peers
	$(PYTHON) -m benchmarks.run --compare

clean:
	rm -rf $(VENV) node_modules logstore/v1/*_pb2*.py logstore/v1/*_pb2.pyi
