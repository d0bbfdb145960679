# AutoGLM Mesh — `make run` starts everything, `make test` runs the whole suite.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help install system-deps tools demo-model run test lint typecheck unit integration e2e k8s bench clean

help:
	@echo "make run    install, build tools, start Redis + Vault + the three apps (foreground)"
	@echo "make test   install, build tools, lint, typecheck, then unit + integration + e2e tests"
	@echo "make tools  build daprd, the dapr CLI and vault into .tools/bin (no-op when current)"

system-deps:
	@command -v redis-server >/dev/null || { \
	  echo "[make] installing redis-server from Debian"; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q redis-server; }
	@command -v go >/dev/null || { echo "[make] Go toolchain missing (needed to build daprd, dapr, vault)"; exit 1; }

# The venv is rebuilt only when the lock or project metadata change.
$(INSTALLED): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 required"'
	@echo "[make] creating $(VENV) and installing pinned dependencies (first run downloads torch, several minutes)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --progress-bar on -r requirements.lock
	@$(PY) -m pip install -q --no-deps -e .
	@touch $@

install: system-deps $(INSTALLED)

tools: system-deps
	@tools/build.sh all

demo-model: $(INSTALLED)
	@$(VENV)/bin/autoglm models init-demo

run: install tools demo-model
	@$(VENV)/bin/autoglm dev up

lint: $(INSTALLED)
	@$(VENV)/bin/ruff check services tests load
	@$(VENV)/bin/ruff format --check services tests load

typecheck: $(INSTALLED)
	@$(VENV)/bin/mypy

unit: $(INSTALLED)
	@$(PY) -m pytest -m unit -q

integration: install tools
	@$(PY) -m pytest -m integration -q

e2e: install tools
	@$(PY) -m pytest -m e2e -q

# Offline validation of k8s/ (kustomize + schemas from tools/build.sh); no cluster.
k8s: install tools
	@$(PY) -m pytest -m k8s -q

test: install tools lint typecheck
	@$(PY) -m pytest -q

clean:
	rm -rf .data .pytest_cache .mypy_cache .ruff_cache
