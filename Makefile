# Two commands do everything: `make run` (a simulated federation on the built-in data)
# and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/quickstart.json

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/pip install --quiet -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
	$(BIN)/python -c "import torch, flwr, transformers, ray" 
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/fed-a2v simulate --config $(CONFIG)

test: lint
	$(BIN)/python -m pytest tests

# ruff, then the import contracts in pyproject.toml ([tool.importlinter]): layers, no Flower in
# the library layers, no import circle (imports inside functions count).
lint: $(STAMP)
	$(BIN)/ruff check fed_a2v server client tests benchmarks scripts
	$(BIN)/lint-imports --no-cache

# Every benchmark writes a fragment to benchmarks/out/; collect.py merges them into
# benchmarks/results.json and benchmarks/RESULTS.md (one run, one machine).
bench: $(STAMP)
	rm -rf benchmarks/out
	$(BIN)/python benchmarks/upstream_design.py
	$(BIN)/python benchmarks/real_sizes.py
	$(BIN)/python benchmarks/encode_cache.py
	$(BIN)/python benchmarks/encode_cache.py --full-size-ast --max-clips 8 --epochs 3 --name encode_cache_full_ast
	$(BIN)/python benchmarks/server_memory.py
	$(BIN)/python benchmarks/server_memory.py --kd --nodes 3 30
	$(BIN)/python benchmarks/transport.py
	$(BIN)/python benchmarks/flower_overhead.py
	$(BIN)/python benchmarks/message_objects.py
	$(BIN)/python benchmarks/node_process.py
	if $(BIN)/python -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then \
		$(BIN)/python benchmarks/gpu.py; fi
	$(BIN)/python benchmarks/collect.py

clean:
	rm -rf $(VENV) runs data .pytest_cache

# Opt-in, not part of `test`: the plain and the TLS compose federations in real containers
# (needs a Docker engine and the flwr images; see the README's compose section).
.PHONY: test-compose
test-compose:
	bash scripts/test_compose.sh
