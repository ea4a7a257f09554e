# The two commands of the README: `make demo` and `make test`. Both create .venv and install
# the project into it first (again only when pyproject.toml changes).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo serve test lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[bench,test]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/paysw demo

serve: $(VENV)/.installed
	$(BIN)/paysw demo --serve

lint: $(VENV)/.installed
	$(BIN)/ruff check .

# Two pytest processes (xdist): a test file runs whole in one of them; the files that start the
# demo stack on its fixed ports run one after the other in one of them; files go out in the order
# tests/conftest.py puts them (longest first), not by how many tests each has.
test: lint
	$(BIN)/pytest -n 2 --dist loadfile --no-loadscope-reorder
