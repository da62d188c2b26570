# Two commands a newcomer types: `make train` and `make test`. Each does its own set-up,
# and set-up is skipped when it is already done.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DATA_STAMP := $(VENV)/.data-verified
export TF_CPP_MIN_LOG_LEVEL := 3
DEBIAN_DATA := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: setup data train train-keras test bench bench-accuracy docs lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
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
	$(BIN)/python -m torch_impl.fashion_mnist --download
	touch $@

train: $(DATA_STAMP)
	$(BIN)/python -m torch_impl.train --out runs/torch

train-keras: $(DATA_STAMP)
	$(BIN)/python -m keras_ref.train --out runs/keras

test: $(DATA_STAMP)
	$(BIN)/python -m pytest -q

bench: $(DATA_STAMP)
	$(BIN)/python -m bench.speed --out bench/results/speed.json

bench-accuracy: $(DATA_STAMP)
	$(BIN)/python -m bench.accuracy --out bench/results/accuracy.json

lint: $(STAMP)
	$(BIN)/ruff check torch_impl keras_ref parity tests bench

clean:
	rm -rf $(VENV) runs .pytest_cache
