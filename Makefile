# sa2va-ray: `make demo` runs the pipeline on the embedded default, `make test` runs the tests.
# Both create .venv/ and install everything on a fresh machine (CPU). See README for the GPU install.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export RAY_AUTH_MODE ?= token
export RAY_USAGE_STATS_ENABLED ?= 0
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1

.PHONY: install demo demo-tune test test-all lint bench clean

install: $(STAMP)

# Order matters: torch first (the CPU wheel on this disk), then sam2 without its torchvision pin,
# then deepspeed without build isolation (its setup.py imports torch), then the package itself.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q hydra-core iopath tqdm
	SAM2_BUILD_CUDA=0 $(BIN)/pip install -q --no-build-isolation --no-deps "sam2==1.1.0"
	DS_BUILD_OPS=0 $(BIN)/pip install -q --no-build-isolation "deepspeed==0.19.8"
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python jobs/demo.py --config configs/demo.yaml

demo-tune: $(STAMP)
	$(BIN)/python jobs/tune.py --config configs/tune_demo.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not gpu and not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "not gpu"

lint: $(STAMP)
	$(BIN)/ruff check sa2va_ray jobs tests benchmarks

bench: $(STAMP)
	for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) outputs .pytest_cache
