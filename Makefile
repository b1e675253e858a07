# ISMoE soil moisture: QGIS Processing plugin.
#
#   make install   QGIS + Python stack (apt), .venv with torch, plugin visible + enabled
#   make demo      synthetic demo region -> prepare -> train -> predict, via qgis_process
#   make test      the test suite, then make lint (what .ci/run runs)
#   make lint      flake8 (Debian's) over ismoe_qgis, tests, scripts (config: .flake8)
#   make bench     benchmarks/run_all.py
#   make gpu-check the CUDA tests (pytest -m cuda) + the GPU benchmarks, one table (skips without a GPU)
#   make zip       dist/ismoe_qgis-<version>.zip for the Plugin Manager's "Install from ZIP" (help pages first)
#   make helppages regenerate the help pages shipped in ismoe_qgis/help/ (each algorithm's helpUrl)
#   make env       print the environment for QGIS / qgis_process (eval "$(make -s env)")
#
# Every target is idempotent; a second `make install` checks and changes nothing.

SHELL := /bin/bash
ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
SYS_PYTHON := /usr/bin/python3
VENV := $(ROOT)/.venv
PY := $(VENV)/bin/python
# the torch version has one owner, ismoe_qgis/options.py (the plugin installs the same one)
TORCH_VERSION := $(shell sed -n 's/^TORCH_VERSION = "\(.*\)"/\1/p' $(ROOT)/ismoe_qgis/options.py)
# Extra pip arguments for torch, e.g. TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_PIP_ARGS ?=
CONSTRAINTS := $(ROOT)/constraints.txt
OUT ?= out/demo
PYTEST_ARGS ?=

APT_PACKAGES := qgis python3-qgis qgis-providers python3-rasterio python3-gdal gdal-bin \
	python3-xarray python3-netcdf4 python3-pyqtgraph python3-venv python3-pip \
	python3-pytest xvfb xauth flake8
# optional: Zarr cubes and Dask prediction (issue 15); a release without one of them still installs, and
# those features say what is missing (their tests skip)
APT_OPTIONAL := python3-zarr python3-dask python3-distributed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Prefix for recipes that run QGIS: QT_QPA_PLATFORM=offscreen, PYTHONPATH=<venv site-packages>,
# QGIS_PLUGINPATH=<repo root>, QGIS_PROCESS=/usr/bin/qgis_process.bin (see scripts/env.sh).
QGIS_ENV := source $(ROOT)/scripts/env.sh &&

# The profile folder QGIS desktop and a plain qgis_process use by default.
QGIS_PROFILE_PLUGINS = $${QGIS_CUSTOM_CONFIG_PATH:-$${XDG_DATA_HOME:-$$HOME/.local/share}/QGIS/QGIS3}/profiles/default/python/plugins

.PHONY: install apt venv constraints torch plugin link demo test lint bench gpu-check env clean distclean help zip helppages

help:
	@sed -n '3,12p' $(ROOT)/Makefile | sed 's/^# *//'

install: apt venv constraints torch plugin link
	@echo "install: done. QGIS environment: eval \"\$$(make -s env)\"; qgis_process: scripts/qgis_process"

# --- system packages: only what dpkg says is missing; apt-get update only when needed ----
apt:
	@missing=""; \
	for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}\n' "$$p" 2>/dev/null | grep -q '^install ok installed$$' || missing="$$missing $$p"; \
	done; \
	optional=""; \
	for p in $(APT_OPTIONAL); do \
	  dpkg-query -W -f='$${Status}\n' "$$p" 2>/dev/null | grep -q '^install ok installed$$' || optional="$$optional $$p"; \
	done; \
	if [ -z "$$missing$$optional" ]; then echo "apt: all packages installed"; exit 0; fi; \
	apt_get="$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get"; \
	if ! ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1; then $$apt_get update || exit 1; fi; \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing$$missing"; \
	  $$apt_get install -y --no-install-recommends $$missing \
	    || { $$apt_get update && $$apt_get install -y --no-install-recommends $$missing; } || exit 1; \
	fi; \
	if [ -n "$$optional" ]; then \
	  echo "apt: installing (optional)$$optional"; \
	  $$apt_get install -y --no-install-recommends $$optional || for p in $$optional; do \
	    $$apt_get install -y --no-install-recommends $$p \
	      || echo "apt: $$p is not available here: Zarr cubes / Dask prediction need it (their tests skip)"; \
	  done; \
	fi

# --- venv that also sees the system packages (QGIS, GDAL, rasterio, numpy) ---------------
venv: apt
	@if [ -x "$(PY)" ] && grep -q '^include-system-site-packages = true' "$(VENV)/pyvenv.cfg" 2>/dev/null; then \
	  echo "venv: $(VENV) ok"; \
	else \
	  echo "venv: creating $(VENV)"; \
	  $(SYS_PYTHON) -m venv --system-site-packages "$(VENV)"; \
	fi

# --- numpy pinned to the system's version (a pip numpy 2.x breaks Debian's GDAL/rasterio) -
constraints: apt
	@line="numpy==$$($(SYS_PYTHON) -c 'import numpy; print(numpy.__version__)')" || exit 1; \
	if [ "$$(cat "$(CONSTRAINTS)" 2>/dev/null)" != "$$line" ]; then \
	  echo "$$line" > "$(CONSTRAINTS)"; echo "constraints: wrote $$line"; \
	else echo "constraints: $$line"; fi

torch: venv constraints
	@if $(PY) -c 'import sys, torch; sys.exit(torch.__version__.split("+")[0] != "$(TORCH_VERSION)")' 2>/dev/null; then \
	  echo "torch: $(TORCH_VERSION) ok"; \
	else \
	  echo "torch: installing torch==$(TORCH_VERSION)"; \
	  $(PY) -m pip install --no-input --disable-pip-version-check $(TORCH_PIP_ARGS) \
	    "torch==$(TORCH_VERSION)" -c "$(CONSTRAINTS)" || exit 1; \
	fi
	@$(PY) -c 'import numpy, sys; sys.exit(0 if numpy.__file__.startswith("/usr/") else \
	  "numpy in the venv shadows the system one (" + numpy.__file__ + "); run: make distclean install")'

# --- plugin visible (QGIS_PLUGINPATH) and enabled for qgis_process ---------------------------
plugin: apt torch
	@$(QGIS_ENV) if "$$QGIS_PROCESS" plugins 2>/dev/null | grep -qE '^\* ismoe_qgis\s*$$'; then \
	  echo "plugin: ismoe_qgis enabled ($$QGIS_PROCESS)"; \
	else \
	  "$$QGIS_PROCESS" plugins enable ismoe_qgis 2>&1 | grep -v -e DeprecationWarning -e XDG_RUNTIME_DIR; \
	  "$$QGIS_PROCESS" plugins 2>/dev/null | grep -qE '^\* ismoe_qgis\s*$$' \
	    || { echo "plugin: could not enable ismoe_qgis" >&2; exit 1; }; \
	fi

# --- a link in the default QGIS profile, so QGIS desktop started from the menu finds it ----
link: plugin
	@dest="$(QGIS_PROFILE_PLUGINS)/ismoe_qgis"; \
	if [ -L "$$dest" ] && [ "$$(readlink -f "$$dest")" = "$(ROOT)/ismoe_qgis" ]; then \
	  echo "link: $$dest ok"; \
	elif [ -e "$$dest" ] || [ -L "$$dest" ]; then \
	  echo "link: $$dest exists and is not a link to this clone; left alone"; \
	else \
	  mkdir -p "$$(dirname "$$dest")" && ln -s "$(ROOT)/ismoe_qgis" "$$dest" && echo "link: $$dest -> $(ROOT)/ismoe_qgis"; \
	fi

demo:
	@$(QGIS_ENV) OUT="$(OUT)" PY="$(PY)" bash $(ROOT)/scripts/demo.sh

# the tests first (CI reads their summary line), then the lint; either failing fails the target
test:
	@$(QGIS_ENV) cd $(ROOT) && $(PY) -m pytest -q tests $(PYTEST_ARGS); rc=$$?; \
	  $(MAKE) -s -C $(ROOT) lint || rc=1; exit $$rc

lint:
	@command -v flake8 >/dev/null 2>&1 || { echo "lint: flake8 is not installed (apt install flake8, or make apt)" >&2; exit 1; }
	@cd $(ROOT) && flake8 ismoe_qgis tests scripts benchmarks && echo "lint: flake8 clean"

bench:
	@$(QGIS_ENV) cd $(ROOT) && $(PY) benchmarks/run_all.py

# --- GPU check (issue 15 item 7): the CUDA-marked tests, then benchmarks/run_all.py --gpu-check (device cuda,
# minutes on one H100/H200; out/bench/performance.json and one table of the GPU targets). Without a CUDA device
# both say so and skip, exit status 0. A machine with torch but no QGIS: make gpu-check PY=python3
# CUDA_TESTS=tests/test_cuda.py
CUDA_TESTS ?= tests
gpu-check:
	@$(QGIS_ENV) cd $(ROOT) && $(PY) -m pytest -q -p no:cacheprovider -rs -m cuda $(CUDA_TESTS) $(PYTEST_ARGS); \
	  rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 5 ] || exit $$rc
	@$(QGIS_ENV) cd $(ROOT) && $(PY) benchmarks/run_all.py --gpu-check

# --- the plugin zip: ismoe_qgis/ at the zip root (metadata.txt, icon, LICENSE, README, docs, help,
# styles, models); needs only QGIS's Python (no torch): the help pages are built with QGIS first --------
ZIP ?= $(ROOT)/dist/ismoe_qgis-$(shell sed -n 's/^version=//p' $(ROOT)/ismoe_qgis/metadata.txt).zip
HELP_PY := $(shell [ -x "$(PY)" ] && echo "$(PY)" || echo "$(SYS_PYTHON)")

helppages:
	@$(QGIS_ENV) cd $(ROOT) && $(HELP_PY) scripts/build_help.py 2>&1 | grep -v -e XDG_RUNTIME_DIR -e DeprecationWarning; \
	  test "$${PIPESTATUS[0]}" = 0

zip: helppages
	@$(SYS_PYTHON) $(ROOT)/scripts/make_zip.py "$(ZIP)"

env:
	@$(ROOT)/scripts/env.sh --print

clean:
	rm -rf $(ROOT)/out $(ROOT)/.pytest_cache $(ROOT)/dist
	find $(ROOT)/ismoe_qgis $(ROOT)/tests -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(CONSTRAINTS)
