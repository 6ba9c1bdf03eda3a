# The README's commands. Each creates .venv on first use: torch==2.13.0 first (a CPU wheel),
# then this package with its dev and examples extras, under constraints.txt (which pins torch, so
# no later install can move it); later runs reuse .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# TensorBoard's port and the folder the examples log to.
PORT ?= 6006
LOGDIR ?= runs
# setuptools says, for every editable install, that a folder named like the package may shadow
# it: here that folder is the package itself, so that note is silenced (nothing else is). The pip
# upgrade runs with -qq, so a mirror without pip on this machine's pip index list stays quiet.
QUIET_EDITABLE := PYTHONWARNINGS="ignore:Editable installation"

.PHONY: demo wrong-backward tensorboard test lint docs screenshots venv clean mutation

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(QUIET_EDITABLE) $(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,examples]"
	touch $(STAMP)

# The digits classifier with checks at steps 0, 100 and 250: every check passes.
demo: $(STAMP)
	$(BIN)/python examples/digits.py

# A layer with a wrong hand-written backward: the check fails and names it.
wrong-backward: $(STAMP)
	$(BIN)/python examples/wrong_backward.py

# TensorBoard on what the examples logged (runs/), smoothing off; Ctrl+C stops it.
tensorboard: $(STAMP)
	@echo "Open http://localhost:$(PORT)/?smoothing=0 (Ctrl+C stops TensorBoard)"
	$(BIN)/python -m tensorboard.main --logdir $(LOGDIR) --port $(PORT)

# The fast tests and the docs' examples run a second time on another path of torch's CPU kernels
# (ATen's plain one, without AVX2/AVX-512), whose last digits differ: a test that holds on one
# machine's rounding only, or on the order of two tied figures, fails here, on every machine.
KERNELS := ATEN_CPU_CAPABILITY=default

test: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .
	$(BIN)/python -m mypy gradwatch callbacks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q
	$(KERNELS) $(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow"
	$(KERNELS) $(BIN)/python -m pytest -q -p no:cacheprovider -m slow tests/test_docs.py

lint: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check .
	$(BIN)/python -m mypy gradwatch callbacks
	$(BIN)/lint-imports

# The documentation site (mkdocs.yml: docs/ and the API reference from the docstrings) in site/;
# --strict turns every warning (a broken link, a page outside the nav) into an error. The `docs`
# extra is installed on first use, under constraints.txt.
DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): $(STAMP)
	$(QUIET_EDITABLE) $(BIN)/python -m pip install --quiet -c constraints.txt -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/python -m mkdocs build --strict --quiet
	@echo "The site is in site/ (open site/index.html)"

# The README's TensorBoard pictures (docs/images), taken by headless Chromium from a passing
# and a failing run.
screenshots: $(STAMP)
	$(BIN)/python -m tests.browser docs/images

clean:
	rm -rf $(VENV) lightning_logs build site *.egg-info

# Mutation testing of the modules that read and decide ([tool.mutmut] in pyproject.toml); not part
# of `make test`. The score and the surviving mutants: CONTRIBUTING.md.
mutation: $(STAMP)
	$(BIN)/mutmut run --max-children 2
	$(BIN)/mutmut results
