# The two commands of the README. Each does all set-up it needs on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench engine

setup:
	./scripts/setup.sh

engine:
	./scripts/docker-engine.sh

## make demo: set up, train a digits CNN, export, quantize, benchmark, deploy; print the URLs
demo: setup
	./scripts/docker-engine.sh || echo "No Docker engine could be started: the process runtime will serve."
	$(VENV)/bin/nbdeploy quickstart

## make test: set up, start a real Docker engine, lint, then run every test
test: setup
	./scripts/test.sh

lint: setup
	$(VENV)/bin/ruff check nbdeploy tests benchmarks
	$(VENV)/bin/ruff format --check nbdeploy tests benchmarks

bench: setup engine
	$(PY) benchmarks/bench_core.py
	$(PY) benchmarks/bench_endpoint.py
