# The two commands of the README: `make demo` and `make test`. Both create .venv and install
# the project into it first (again only when pyproject.toml changes).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: demo serve test lint bytecode

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[bench,test]"
	touch $@

demo: $(VENV)/.installed bytecode
	$(BIN)/paysw demo

serve: $(VENV)/.installed bytecode
	$(BIN)/paysw demo --serve

# The project's modules compiled once (only those changed since), for the dozens of processes a
# stack or a test run starts: where PYTHONDONTWRITEBYTECODE is set (some CI images, containers),
# each would otherwise compile them again, about 0.2 s of CPU for a front end's imports.
bytecode: $(VENV)/.installed
	$(BIN)/python -m compileall -q -j 0 actors bench hsm protocols risk switch tests

lint: $(VENV)/.installed
	$(BIN)/ruff check .

# Test processes (xdist): one more than the cores, up to four (three on CI's two cores: the tests
# also wait, on deadlines, resolvers' schedules and Ray's start, and the third computes meanwhile;
# measured on two cores, 674 s with two processes, 481 and 548 s with three). A test file runs whole in one of
# them; the files that start the demo stack on its fixed ports run one after the other in one of
# them; files go out in the order tests/conftest.py puts them (longest first).
TEST_PROCESSES ?= $(shell n=$$(nproc); echo $$(( n < 3 ? n + 1 : 4 )))
test: lint bytecode
	$(BIN)/pytest -n $(TEST_PROCESSES) --dist loadfile --no-loadscope-reorder
