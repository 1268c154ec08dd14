# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
PACKAGES := $(sort $(wildcard packages/engage-*))
STAMP := $(VENV)/.install-stamp
# engage-memory's tests train a tiny Hugging Face GPT-2 (built from its config, no weights). Hugging
# Face transformers lives apart from the environment, on no process's path but that test's:
# installed, torchmetrics imports it with every `import lightning`, 1.2 s more for each trainer,
# rank and sweep job the suite starts.
TRANSFORMERS_APART := $(VENV)/transformers-apart
PYTEST_ARGS ?= --durations=30

.PHONY: install demo test lint clean system-deps docs docs-screenshots

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first: a CPU build of exactly this version, so no dependency can pull another one.
$(STAMP): $(BIN)/python $(foreach p,$(PACKAGES),$(p)/pyproject.toml) pyproject.toml
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet $(foreach p,$(PACKAGES),-e $(p)) -e ".[dev,docs]"
	@# pip warns that the packages apart do not match the environment's: shown only if it fails
	$(PIP) uninstall --quiet --yes transformers 2>/dev/null || true
	$(PIP) install --quiet --upgrade --target $(TRANSFORMERS_APART) "transformers>=4.40" \
		2>$(VENV)/transformers-apart.log || { cat $(VENV)/transformers-apart.log; exit 1; }
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/engage run
	@echo "MLflow runs: $(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db  (experiment 'engage')"

# The netns hosts of engage-deploy run their own sshd, the C example simulation compiles against
# libzmq (Debian's libzmq3-dev, whose libzmq has CURVE through libsodium), the MLflow UI check
# drives Debian's headless Chromium and the Slurm executor's tests start a one-node cluster
# (slurm-wlm, munge); as root, install what is missing (their tests skip with a reason otherwise).
SYSTEM_PACKAGES := openssh-server libzmq3-dev chromium chromium-driver slurm-wlm munge
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& { [ ! -x /usr/sbin/sshd ] || [ ! -f /usr/include/zmq.h ] || [ ! -x /usr/bin/chromedriver ] \
			|| [ ! -x /usr/sbin/slurmctld ] || [ ! -x /usr/sbin/munged ]; }; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(SYSTEM_PACKAGES) >/dev/null) \
		|| echo "$(SYSTEM_PACKAGES) could not be installed: SSH tests of netns hosts, the C client, the MLflow UI check or the Slurm executor will skip"; \
	fi

# The documentation site (MkDocs, API reference from the packages' docstrings) in site/; --strict:
# a broken link or reference fails the build, and with it `make test` (tests/test_docs_site.py
# builds the same site the same way, among the other tests).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

# The MLflow UI screenshots of the tutorial, taken by the browser check on a fresh sweep.
docs-screenshots: $(STAMP) system-deps
	@shots=$$(mktemp -d) && ENGAGE_SCREENSHOT_DIR=$$shots $(BIN)/python -m pytest -q -p no:cacheprovider \
		tests/test_mlflow_ui.py && mkdir -p docs/images && cp $$shots/*.png docs/images/ && rm -rf $$shots \
		&& echo "screenshots in docs/images/"

# The suite in two passes, each failing on its own: on every core (a pytest-xdist worker per core
# and one more, for the time the Slurm tests wait on their cluster: the root conftest.py; at most
# 4), then the tests that compare measured times or rates (marked timing), alone.
test: $(STAMP) system-deps
	$(BIN)/python -m pytest -n logical --maxprocesses 4 --dist loadgroup $(PYTEST_ARGS)
	$(BIN)/python -m pytest -m timing $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) wheelhouse outputs multirun mlflow.db mlruns site
