# Every target sets itself up from nothing: its own venv with `pip install -e '.[test]'`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: test demo bench soak release gate addon-check test-odoo clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# pytest exits 5 when it collected no test: a non-zero exit, so make (and CI) fail.
test: $(STAMP)
	$(PY) -m pytest tests
	$(MAKE) --no-print-directory gate
	$(MAKE) --no-print-directory addon-check
	@if [ -n "$(ODOO_SRC)" ]; then $(MAKE) --no-print-directory test-odoo ODOO_SRC="$(ODOO_SRC)"; \
	 else echo "ODOO_SRC not set: the addon's Odoo tests were not run (static checks only)"; fi

demo: $(STAMP)
	$(PY) tools/demo.py

# The bench extra brings what we compare against (OpenTelemetry's instrumentation).
bench: $(STAMP)
	$(PY) -m pip install -q -e '.[test,bench]'
	$(PY) -m bench

soak: $(STAMP)
	NETAUDIT_SOAK=1 $(PY) -m pytest tests/reliability -q -s

# Build the sdist and wheel with the standard `build` frontend, then gate them.
release: $(STAMP)
	$(PY) -m pip install -q build
	rm -rf build dist
	$(PY) -m build --sdist --wheel --outdir dist .
	$(PY) tools/release_gate.py dist/*.whl dist/*.tar.gz

gate: release

addon-check: $(STAMP)
	$(PY) tools/addon_check.py odoo_addon/mit_network_audit

test-odoo:
	bash tools/test_odoo.sh "$(ODOO_SRC)"

clean:
	rm -rf $(VENV) dist build *.egg-info .pytest_cache .hypothesis
