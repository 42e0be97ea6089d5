# Two entry points for a fresh clone: `make run` and `make test`.
# Both create .venv and install Keisei into it on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is installed first and pinned, so pip never resolves a newer (CUDA) build.
# On machines without a local CPU wheel, add e.g.
#   TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
PYTEST_ARGS ?=
# Each `make run` trains into a fresh run directory, watched at http://$(WEB)/
RUN_DIR ?= runs/quick-$(shell date +%Y%m%d-%H%M%S)
WEB ?= 127.0.0.1:8080

.PHONY: setup run test e2e soak docker-test bench docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

run: setup
	$(BIN)/keisei-learner --config configs/quick.toml --set run.dir=$(RUN_DIR) --local-actors 2 --web $(WEB)

test: setup
	$(BIN)/ruff check keisei learner workers pretrain tests bench tools
	$(BIN)/mypy --strict keisei/ learner/ workers/ pretrain/
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# End-to-end runs of a minute or more each (about 7 minutes in all), kept out of `make test`.
e2e: setup
	$(BIN)/python -m pytest -m e2e $(PYTEST_ARGS)

soak: setup
	$(BIN)/python -m pytest -m soak -s $(PYTEST_ARGS)

# The compose stack with a real Docker engine (skips, saying why, without one).
docker-test: setup
	$(BIN)/python -m pytest -m docker -s $(PYTEST_ARGS)

# The documentation site: the generated reference pages, then mkdocs build --strict into
# site/ (a broken link or a page missing from the navigation fails).
docs: setup
	$(BIN)/pip install --quiet -e '.[docs]'
	$(BIN)/python tools/reference.py
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: setup
	$(BIN)/python -m bench.game_speed
	$(BIN)/python -m bench.collector
	$(BIN)/python -m bench.learner
	$(BIN)/python -m bench.end_to_end
	$(BIN)/python -m bench.cores
	$(BIN)/python -m bench.distributed
	$(BIN)/python -m bench.ranks
	$(BIN)/python -m bench.search

clean:
	rm -rf $(VENV) build site *.egg-info
