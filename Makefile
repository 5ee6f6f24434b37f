# Two entry points for a newcomer: `make demo` and `make test`. Each sets everything up first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test numerics durations setup data clean

setup: $(STAMP) data

# pip (not uv/poetry): torch and torchvision come from this machine's local wheels.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# Fashion-MNIST, the offline dataset: Debian's package (elsewhere: hcgnet train --download).
data: $(FASHION_MNIST)
$(FASHION_MNIST):
	$(SUDO) apt-get update -qq
	$(SUDO) apt-get install -y -qq dataset-fashion-mnist

demo: setup
	$(VENV)/bin/hcgnet train --recipe demo --overwrite

# One pytest worker per core, at most four (pytest-xdist); tests/conftest.py gives each worker its share of the
# threads. `make durations` times tests one at a time, as the slow marker's threshold assumes.
PARALLEL := -n auto --maxprocesses 4
test: setup
	$(PY) -m pytest -q $(PARALLEL)
	$(MAKE) --no-print-directory numerics

# The low-precision (bf16) results again, as on CPUs below this one: torch picks its own kernels by
# ATEN_CPU_CAPABILITY and oneDNN its convolutions by ONEDNN_MAX_CPU_ISA, and their rounding differs (oneDNN's
# AVX2 bf16 kernels round partial sums). Each level is run where the machine has the flag just above it
# (flag:ATEN_CPU_CAPABILITY:ONEDNN_MAX_CPU_ISA): AMX -> AVX512-BF16 -> AVX-512 -> AVX2 -> SSE4.1.
NUMERICS_LEVELS := amx_bf16:avx512:AVX512_CORE_BF16 avx512_bf16:avx512:AVX512_CORE avx512f:avx2:AVX2 avx2:default:SSE41
numerics: setup
	@flags="$$(grep -m1 -ow -E 'amx_bf16|avx512_bf16|avx512f|avx2' /proc/cpuinfo 2>/dev/null)"; \
	for level in $(NUMERICS_LEVELS); do \
	  set -- $$(echo $$level | tr : ' '); \
	  echo "$$flags" | grep -qx $$1 || continue; \
	  echo "numerics tests as on a CPU with $$3 (ATEN_CPU_CAPABILITY=$$2 ONEDNN_MAX_CPU_ISA=$$3)"; \
	  ATEN_CPU_CAPABILITY=$$2 ONEDNN_MAX_CPU_ISA=$$3 $(PY) -m pytest -q $(PARALLEL) -p no:cacheprovider -m numerics || exit 1; \
	done

# Measure every test's time again; tests/durations.json decides which ones are marked slow.
durations: setup
	$(PY) -m pytest -q -n 0 --record-durations tests/durations.json

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
