# Two entry points for a newcomer: `make demo` and `make test`. Each sets everything up first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test durations setup data clean

setup: $(STAMP) data

# pip (not uv/poetry): torch and torchvision come from this machine's local wheels.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Fashion-MNIST, the offline dataset: Debian's package (elsewhere hcgnet falls back to torchvision's download).
data: $(FASHION_MNIST)
$(FASHION_MNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

demo: setup
	$(VENV)/bin/hcgnet train --recipe demo --overwrite

test: setup
	$(PY) -m pytest -q

# Measure every test's time again; tests/durations.json decides which ones are marked slow.
durations: setup
	$(PY) -m pytest -q --record-durations tests/durations.json

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
