# The two commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
EXTRAS := test,distributed,bench,serve

.PHONY: install demo test test-fast bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/hashindex demo --out demo-output

test: $(STAMP)
	$(BIN)/python -m pytest

# Skips the slow tests (crash-resume, Ray, training to accuracy) while iterating.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow"

# The latency benchmark of the README (about 9 minutes on 2 idle cores).
bench: $(STAMP)
	$(BIN)/hashindex bench --sizes 1e6,1e7

clean:
	rm -rf $(VENV) demo-output *.egg-info .pytest_cache
