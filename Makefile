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

.PHONY: setup run test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

setup: $(VENV)/.installed

run: setup
	$(BIN)/python -m keisei.shogi play --seed 1

test: setup
	$(BIN)/ruff check keisei learner workers tests bench
	$(BIN)/mypy --strict keisei/
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: setup
	$(BIN)/python bench/game_speed.py

clean:
	rm -rf $(VENV) build *.egg-info
