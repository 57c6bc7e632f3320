# taskomatic developer tasks. `make test` on a fresh Debian 12 machine (as root) installs what it
# needs: the system packages only when missing, the venv only when pyproject.toml changed.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# libvirt-python builds from source: it needs the libvirt headers, pkg-config, a C compiler and
# Python's headers; python3-venv provides ensurepip for `python3 -m venv` on Debian.
APT_PACKAGES := libvirt-dev pkg-config gcc python3-dev python3-venv nginx chromium
LINT_PATHS := taskomatic activities workflows starter lab worker.py

.PHONY: venv install system-packages lab-system demo test lint bench clean

venv install: $(STAMP)

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-packages
	@test -x $(BIN)/pip || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

system-packages:
	@command -v dpkg >/dev/null || { echo "no dpkg: install $(APT_PACKAGES) yourself"; exit 0; }; \
	missing=""; \
	for pkg in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q 'ok installed' \
			|| missing="$$missing $$pkg"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "missing system packages:$$missing; run: sudo apt-get install$$missing" >&2; exit 1; \
	fi; \
	echo "installing system packages:$$missing"; \
	apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing

# The local libvirt lab (`taskomatic lab`, the lab tests): libvirtd, QEMU and iproute2 from
# Debian (no systemd), the QEMU user and group libvirt expects. Needs root; idempotent.
lab-system: $(STAMP)
	$(BIN)/python -m lab.system

demo: $(STAMP)
	$(BIN)/taskomatic dev --demo

test: $(STAMP) lab-system
	$(BIN)/pytest -q

lint: $(STAMP)
	$(BIN)/ruff check $(LINT_PATHS)
	$(BIN)/mypy $(LINT_PATHS)

bench: $(STAMP)
	$(BIN)/python -m bench
	$(BIN)/python -m bench.ordering

# Keeps .taskomatic/ (the dev stack's state: Temporal history, embedded PostgreSQL); remove it
# by hand to start the dev stack from scratch.
clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
