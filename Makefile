# The two commands of the README: `make demo` and `make test`. Everything else is a helper for them.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO ?= demo

.PHONY: install demo demo-local serve test lint browser sandbox clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: the version BNRank is tested with (a CPU wheel on the dev machines).
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)


# The whole product on the embedded default: demo data, API + worker, uploads, dataset, ranking, table.
demo: install
	$(VENV)/bin/bnrank demo --out $(DEMO)

# The same ranking with the engine alone, no service.
demo-local: install
	$(VENV)/bin/bnrank demo-data --out $(DEMO)
	$(VENV)/bin/bnrank rank --dataset $(DEMO)/Dataset501_MNIBrain --json $(DEMO)/ranking.json \
		$(DEMO)/candidates/*.safetensors

serve: install
	$(VENV)/bin/bnrank serve

lint: install
	$(VENV)/bin/ruff check .

# The browser test drives Debian's Chromium: installed (apt-get, sudo when not root) only when it is missing.
browser:
	./.ci/install-chromium

# The sandboxed TorchScript conversion (BNRANK_SANDBOX=bwrap) and its tests run under Debian's bubblewrap.
sandbox:
	./.ci/install-bubblewrap

test: install lint browser sandbox
	$(VENV)/bin/pytest -q

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache
