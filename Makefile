# Two commands a newcomer types: `make train` and `make test`. Each does its own set-up,
# and set-up is skipped when it is already done.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA_STAMP := $(VENV)/.data-verified
export TF_CPP_MIN_LOG_LEVEL := 3
DEBIAN_DATA := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup data train train-ddp train-keras test test-fast test-install test-numerics test-property test-zoo bench bench-accuracy bench-anchors \
	docs notebooks lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[keras,notebooks,dev]'
	touch $@

# The real Fashion-MNIST: FASHION_MNIST_DIR if set, else Debian's dataset-fashion-mnist
# (installed here when we are root with apt-get), else the official download into a user cache.
# Every file is verified (IDX header + SHA-256 of the decompressed bytes) before use.
data: $(DATA_STAMP)

$(DATA_STAMP): $(STAMP)
	@if [ -z "$$FASHION_MNIST_DIR" ] && [ ! -f $(DEBIAN_DATA) ] && [ "$$(id -u)" = 0 ] \
	    && command -v apt-get >/dev/null; then \
	  echo "installing Debian's dataset-fashion-mnist"; \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	    || echo "apt-get could not install dataset-fashion-mnist; trying the official download"; \
	fi
	$(BIN)/python -m fashion_cnn.fashion_mnist --download
	touch $@

train: $(DATA_STAMP)
	$(BIN)/python -m torch_impl.train --out runs/torch

# The same recipe on 2 CPU processes under torchrun (DistributedDataParallel, gloo; --batch-size
# stays the global batch). On GPUs: --device cuda and one process per GPU (README, Scaling out).
train-ddp: $(DATA_STAMP)
	$(BIN)/torchrun --standalone --nproc-per-node 2 -m torch_impl.train --device cpu --threads 1 \
	  --out runs/torch-ddp

train-keras: $(DATA_STAMP)
	$(BIN)/python -m keras_ref.train --out runs/keras

# The suite runs in TEST_WORKERS processes (pytest-xdist; most tests wait on a CLI's interpreter
# or one core's kernels): one per CPU this process may use, at most 4 (each holds TensorFlow and
# PyTorch, about 1.5 GB). TEST_WORKERS=0 runs it in pytest's own process. --dist worksteal hands
# each worker an equal run of the suite and moves tests only when one runs dry, so a module's
# fixtures are mostly built once. Counted when a recipe runs, by the set-up venv.
TEST_WORKERS ?= $(shell $(BIN)/python -c "from fashion_cnn.threads import usable_cpus; print(min(4, usable_cpus()))")
PYTEST_WORKERS = -n $(TEST_WORKERS) --dist worksteal
test: $(DATA_STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_WORKERS) --durations=15 -m "not install"

# The install as a user without Keras has it: the wheel and sdist built and twine-checked, then a
# core-only venv (.venv-core: pip install WHEEL, no TensorFlow) where the core commands run.
test-install: $(DATA_STAMP)
	$(BIN)/python -m pytest -q tests/test_install.py

# The suite without the tests marked slow (training runs, subprocess CLIs, whole-test-set passes).
test-fast: $(DATA_STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_WORKERS) -m "not slow"

# The numeric tests (the parity suite with its zoo and training parity, DDP against one process,
# the optimizer) under each code path this CPU offers: MKL's sgemm branches (MKL_CBWR) and
# oneDNN's convolution kernels (ONEDNN_MAX_CPU_ISA), so that a bound tied to one BLAS fails here,
# not on another machine. A setting is VAR=VALUE[,VAR=VALUE…]; `default` sets nothing.
NUMERICS := parity tests/test_distributed.py tests/test_optim.py
AVX512 := $(shell grep -qw avx512f /proc/cpuinfo 2>/dev/null && echo MKL_CBWR=AVX512)
NUMERICS_SETTINGS ?= default MKL_CBWR=COMPATIBLE MKL_CBWR=AVX2 $(AVX512) \
	MKL_CBWR=AVX2,ONEDNN_MAX_CPU_ISA=AVX2
test-numerics: $(DATA_STAMP)
	@for setting in $(NUMERICS_SETTINGS); do \
	  vars=$$(echo "$$setting" | sed 's/^default$$//; s/,/ /g'); \
	  echo "== make test-numerics: $${vars:-default settings}"; \
	  env $$vars $(BIN)/python -m pytest -q $(PYTEST_WORKERS) $(NUMERICS) || exit 1; \
	done

# The property test at scale: PROPERTY_MODELS seeded random models of the registry's grammar
# (Sequential and Functional), each ported through the CLI, loaded strict from its generated
# source, and ported back bit for bit. `make test` runs 6 of them.
PROPERTY_MODELS ?= 200
test-property: $(DATA_STAMP)
	PROPERTY_MODELS=$(PROPERTY_MODELS) $(BIN)/python -m pytest -q parity/tests/test_property.py

# Every architecture of keras.applications (40), weights=None at its smallest input, ported both
# ways and checked (one README row each); `make test` runs 3 of them.
test-zoo: $(DATA_STAMP)
	APPLICATIONS=all $(BIN)/python -m pytest -q parity/tests/test_applications.py

bench: $(DATA_STAMP)
	$(BIN)/python -m bench.speed --out bench/results/speed.json
	$(BIN)/python -m bench.speed_busy --out bench/results/speed_busy.json
	$(BIN)/python -m bench.ddp --out bench/results/ddp.json
	$(BIN)/python -m bench.port_scale --out bench/results/port_scale.json

# Our port beside the anchors' pipelines (Keras's ONNX export → onnx2torch / onnx2pytorch,
# tf2onnx) on the same models, each tool in its own process; the anchors in their own venv.
ANCHORS := .venv-anchors
$(ANCHORS)/.installed: bench/anchors-requirements.txt
	test -x $(ANCHORS)/bin/python || $(PYTHON) -m venv $(ANCHORS)
	$(ANCHORS)/bin/python -m pip install -q --disable-pip-version-check -r $<
	touch $@

bench-anchors: $(DATA_STAMP) $(ANCHORS)/.installed
	$(BIN)/python -m bench.anchors --anchors-python $(ANCHORS)/bin/python \
	  --out bench/results/anchors.json

bench-accuracy: $(DATA_STAMP)
	$(BIN)/python -m bench.accuracy --out bench/results/accuracy.json

# The book's 8-2 and 8-3 as notebooks, executed in place, outputs written into the .ipynb files:
# 08-2 trains the full recipe (a few minutes on 2 CPU cores) into notebooks/runs/, which 08-3
# reads. Edits to either side of a pair (.ipynb, py:percent .py) are synced first.
NOTEBOOKS := notebooks/08-2.ipynb notebooks/08-3.ipynb
notebooks: $(DATA_STAMP)
	$(BIN)/jupytext --sync $(NOTEBOOKS:.ipynb=.py)
	$(BIN)/jupyter-execute --inplace $(NOTEBOOKS)
	$(BIN)/jupytext --sync $(NOTEBOOKS)

lint: $(STAMP)
	$(BIN)/ruff check fashion_cnn torch_impl keras_ref parity tests bench notebooks conftest.py

clean:
	rm -rf $(VENV) runs notebooks/runs .pytest_cache

# The README's 8-3 pictures: docs/keras/*.png (the book's cells in Keras) and docs/torch/*.png
# (the same from the PyTorch port, Keras's feature maps beside PyTorch's), with the printed
# numbers in output.txt. From a Keras run trained here: `make train-keras` (runs/keras), or
# DOCS_RUN=DIR holding best-cnn-model.keras and history.json.
DOCS_RUN ?= runs/keras
docs: $(DATA_STAMP)
	@test -f $(DOCS_RUN)/best-cnn-model.keras || { echo "no $(DOCS_RUN)/best-cnn-model.keras:" \
	  "run make train-keras first, or make docs DOCS_RUN=DIR"; exit 1; }
	mkdir -p runs/docs docs/keras docs/torch
	$(BIN)/python -m parity.port $(DOCS_RUN)/best-cnn-model.keras runs/docs/best-cnn-model.pt --force
	$(BIN)/python -m keras_ref.visualize $(DOCS_RUN)/best-cnn-model.keras --out docs/keras \
	  > docs/keras/output.txt
	$(BIN)/python -m torch_impl.visualize runs/docs/best-cnn-model.pt --out docs/torch \
	  --history $(DOCS_RUN)/history.json --lang ko > docs/torch/output.txt
	$(BIN)/python -m parity.visualize $(DOCS_RUN)/best-cnn-model.keras runs/docs/best-cnn-model.pt \
	  --out docs/torch >> docs/torch/output.txt
	cat docs/keras/output.txt docs/torch/output.txt
	du -ch docs/keras/*.png docs/torch/*.png | tail -1
