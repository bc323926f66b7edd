# `make test` and `make search` set up .venv themselves and are quick when nothing changed.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The CPU build of torch on disk here; `make TORCH_SPEC=` leaves the choice of torch to pip (e.g. for CUDA).
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# tests run two at a time (pytest-xdist): a test's Ray search leaves a core idle much of the time (process and
# Ray start-up, waits); each test's Ray cluster is its own, on ports picked free
TEST_WORKERS ?= 2

.PHONY: setup test test-fast search dashboard clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ -n "$(TORCH_SPEC)" ] && ! $(PY) -c "import torch" 2>/dev/null; then \
		echo "installing $(TORCH_SPEC) first (CPU build)"; \
		$(PY) -m pip install -q "$(TORCH_SPEC)"; \
	fi
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) -m "not slow" $(PYTEST_ARGS)

search: $(STAMP)
	$(PY) -m tune.search $(ARGS)

# the study of results/NAME in optuna-dashboard (installed with the test extra): make dashboard NAME=... [PORT=8080]
dashboard: $(STAMP)
	@test -n "$(NAME)" || { echo "usage: make dashboard NAME=<a search under results/>" >&2; exit 2; }
	$(PY) -m tune.dashboard results/$(NAME) $(if $(PORT),--port $(PORT))

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
