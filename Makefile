# fastnofrost: one-command set-up and checks.
#   make train    the main job: set-up, then NoFrost on digits (ARGS="--epochs 4" passes flags)
#   make test     create .venv, install torch + the package (+ dev extras), build the kernels, run the tests
#   make test-hosts  the tests under every ATen dispatch level x oneDNN ISA cap x 1/2 threads, as
#                 other hosts round (over an hour on 2 cores; not in CI; ARGS="--jobs 2" etc.)
#   make test-compat the tests under the GPU image's torch 2.11 / torchvision 0.26 / Triton 3.6, in
#                 .compat/ (tests/compat.sh; not in CI: its time is in docs/testing.md)
#   make install  only the set-up
#   make bench    CPU kernel benchmark (prints a table, writes JSON under benchmarks/results/)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.fastnofrost-installed
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install test test-hosts test-compat test-gpu bench train clean

$(STAMP): setup.py pyproject.toml CMakeLists.txt constraints.txt $(wildcard kernels/cpu/*)
	# Fashion-MNIST ships as a Debian package (real data for CPU-scale runs and tests).
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
	      || echo "warning: could not install dataset-fashion-mnist; its tests will skip"; \
	  else echo "note: run 'sudo apt-get install dataset-fashion-mnist' for the Fashion-MNIST dataset"; fi; fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -c constraints.txt $(TORCH_PINS)
	$(PIP) install -q -c constraints.txt cmake ninja
	$(PIP) install -q -c constraints.txt --no-build-isolation -e '.[dev]'
	# torchattacks' metadata pins an old requests and another torch: install it alone.
	$(PIP) install -q --no-deps torchattacks
	$(PY) -c "import torch, fastnofrost; print('fastnofrost ready: torch', torch.__version__)"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

test-hosts: $(STAMP)
	$(PY) tests/hosts.py $(ARGS)

test-compat:
	PYTHON=$(PYTHON) bash tests/compat.sh $(ARGS)

test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu tests

bench: $(STAMP)
	$(PY) benchmarks/bench_kernels.py
	$(PY) benchmarks/bench_data.py

# The main job: NoFrost on a small NF-ResNet on scikit-learn digits, a few minutes on a 2-core CPU.
train: $(STAMP)
	$(PY) fastnofrost/train.py --out runs/demo-$$(date +%Y%m%d-%H%M%S) $(ARGS)

clean:
	rm -rf build *.egg-info fastnofrost/_C*.so
