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

.PHONY: help install system-deps tools demo-model run test lint typecheck unit integration e2e chaos k8s bench bench-peers audit clean

help:
	@echo "make run    install, build tools, start Redis + Vault + the three apps (foreground)"
	@echo "            REPLICAS=2: two gateways and two inference replicas behind HAProxy"
	@echo "make test   install, build tools, lint, typecheck, then every test level (unit, integration, e2e, chaos, k8s)"
	@echo "make tools  build daprd, sentry, placement, vault, kustomize, etcd, kube-apiserver, kubectl into .tools/bin (no-op when current)"
	@echo "make k8s    check k8s/ offline and against a real kube-apiserver (tests/k8s)"
	@echo "make bench  fresh local stack + benchmarks -> load/results/ (several minutes)"
	@echo "make audit  pip-audit of requirements.lock against PyPI's advisories (network)"

system-deps:
	@command -v redis-server >/dev/null || { \
	  echo "[make] installing redis-server from Debian"; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q redis-server; }
	@command -v haproxy >/dev/null || { \
	  echo "[make] installing haproxy from Debian (front door for REPLICAS>1)"; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q haproxy; }
	@command -v go >/dev/null || { echo "[make] Go toolchain missing (needed to build daprd, vault, kustomize, etcd, kube-apiserver, kubectl)"; exit 1; }

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

# REPLICAS=N: N replicas of gateway and inference (HAProxy in front on 8080).
run: install tools demo-model
	@$(VENV)/bin/autoglm dev up $(if $(REPLICAS),--replicas $(REPLICAS))

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

# Fault injection against a stack of its own per module (kills, restarts, bad input).
chaos: install tools
	@$(PY) -m pytest -m chaos -q

# Not part of `make test`: minutes of full load on every core. See load/README.md.
bench: install tools bench-peers
	@$(PY) -m load.bench

# The peer servers `make bench` compares against (issue 15): `transformers serve` needs
# FastAPI, uvicorn and accelerate, pinned in load/peers.lock and kept out of .venv in a
# folder of their own (.data/peers) that only the peer's process sees.
PEERS := .data/peers
bench-peers: $(PEERS)/.installed
$(PEERS)/.installed: load/peers.lock $(INSTALLED)
	@echo "[make] installing the bench peers' serving dependencies into $(PEERS)"
	@rm -rf $(PEERS)
	@$(PY) -m pip install -q --no-deps --target $(PEERS) -r load/peers.lock
	@touch $@

# Known vulnerabilities in the locked dependencies, from PyPI's advisory data. Needs the
# network, so it is not part of `make test` (offline-safe); run it as its own CI job.
# --strict: a pin PyPI cannot audit fails too, never a silent pass. An accepted advisory
# needs a line with a reason in audit-exceptions.txt.
audit: $(INSTALLED)
	@awk '!/^#/ && NF { if ($$2 != "#" || NF < 3) { print "audit-exceptions.txt: " $$1 " has no reason"; bad = 1 } } END { exit bad }' audit-exceptions.txt
	@$(VENV)/bin/pip-audit --requirement requirements.lock --no-deps --disable-pip \
	  --vulnerability-service pypi --progress-spinner off --strict \
	  $$(awk '!/^#/ && NF { printf "--ignore-vuln %s ", $$1 }' audit-exceptions.txt)

# k8s/ checked offline (kustomize, schemas, policy) and against a real kube-apiserver +
# etcd started on 127.0.0.1 by the tests (server-side dry run, then applied for real).
k8s: install tools
	@$(PY) -m pytest -m k8s -q

test: install tools lint typecheck
	@$(PY) -m pytest -q

clean:
	rm -rf .data .pytest_cache .mypy_cache .ruff_cache
