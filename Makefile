# annotation-proxy: `make run` serves, `make test` checks everything. Both create .venv on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The benchmark's interpreter: an optimized build (profile-guided and link-time), as the image's is, so that its
# figures are near what the image spends. Debian's python3.11 is one (3.11.2; the image's default base has
# 3.11.13), and the interpreter of the image that tests/test_image.py builds. Here pyenv's 3.11.7, built without
# --enable-optimizations, spent 7-19% more CPU a request (docs/performance-log.md, the eighteenth round).
# `make bench BENCH_PYTHON=...` picks another.
BENCH_PYTHON ?= /usr/bin/python3.11
BENCH_VENV := .venv-bench
# Named after the interpreter: another BENCH_PYTHON makes the virtualenv again.
BENCH_STAMP := $(BENCH_VENV)/.installed$(subst /,_,$(BENCH_PYTHON))

.PHONY: run test lint format clean bench soak system-packages bench-packages

# $(call virtualenv,PYTHON,DIR): a virtualenv at DIR on PYTHON with the proxy and its test tools, the runtime
# dependencies at the versions of deploy/requirements.lock, the ones the image ships. .venv and .venv-bench are
# both made by it, so the bench runs what the suite tests.
define virtualenv
	$(1) -m venv $(2)
	$(2)/bin/pip install --quiet --upgrade pip
	$(2)/bin/pip install --quiet --constraint deploy/requirements.lock -e '.[test]'
endef

$(STAMP): pyproject.toml deploy/requirements.lock
	@.ci/system-packages run
	$(call virtualenv,$(PYTHON),$(VENV))
	touch $(STAMP)

# The benchmark's own virtualenv, on BENCH_PYTHON. The packages are checked first (BENCH_PYTHON's venv module
# among them), once a run: an order-only prerequisite runs without making the virtualenv again.
$(BENCH_STAMP): pyproject.toml deploy/requirements.lock | bench-packages
	rm -rf $(BENCH_VENV)
	$(call virtualenv,$(BENCH_PYTHON),$(BENCH_VENV))
	touch $(BENCH_STAMP)

run: $(STAMP)
	$(BIN)/annotation-proxy

# The Debian packages the suite runs (redis-server, prometheus, podman, ...): installed as root, else one
# apt-get line to run. .ci/system-packages is the one list.
system-packages:
	@.ci/system-packages

lint: system-packages $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict proxy
# Deployment files: the image, the compose stack, Kubernetes (pinned to 1.33, offline schemas), Prometheus.
	$(BIN)/hadolint Dockerfile
	$(BIN)/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
	$(BIN)/kubernetes-validate --quiet --strict -k 1.33.0 deploy/kubernetes/*/*.yaml
	promtool check config deploy/prometheus/prometheus.yml deploy/prometheus/prometheus-kubernetes.yml
	promtool check rules deploy/prometheus/rules/*.yml
	promtool test rules deploy/prometheus/tests/*.yml

test: lint
	$(BIN)/pytest

# The benchmark (bench/run.py, then bench/hit_costs.py and bench/miss_costs.py), every server of it on
# BENCH_PYTHON: about five minutes; rewrites docs/performance.md's table.
bench: bench-packages $(BENCH_STAMP)
	PYTHONPATH=. $(BENCH_VENV)/bin/python bench/run.py

# What make bench needs from Debian (wrk, nginx, redis-server, BENCH_PYTHON's venv module), checked every run.
bench-packages:
	@BENCH_PYTHON=$(BENCH_PYTHON) .ci/system-packages bench

# A bounded soak (bench/soak.py): a minute of mixed traffic; fails on any error or on memory growth.
soak: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/soak.py --seconds 60

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .mypy_cache .ruff_cache
