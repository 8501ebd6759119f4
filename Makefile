# The two commands of the README. Each does all set-up it needs on a fresh machine.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test lint bench engine

setup:
	./scripts/setup.sh

engine:
	./scripts/docker-engine.sh

## make demo: set up, then train a digits CNN, export, quantize, benchmark and register it
demo: setup
	$(VENV)/bin/nbdeploy quickstart

## make test: set up, start a real Docker engine, lint, then run every test
test: setup
	./scripts/test.sh

lint: setup
	$(VENV)/bin/ruff check nbdeploy tests benchmarks
	$(VENV)/bin/ruff format --check nbdeploy tests benchmarks

bench: setup
	$(PY) benchmarks/bench_core.py
