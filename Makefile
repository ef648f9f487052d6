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

.PHONY: run test lint format clean bench soak system-packages

# The runtime dependencies at the versions of deploy/requirements.lock, the ones the image ships.
$(STAMP): pyproject.toml deploy/requirements.lock
	@.ci/system-packages run
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --constraint deploy/requirements.lock -e '.[test]'
	touch $(STAMP)

# The benchmark's own virtualenv, on BENCH_PYTHON, pinned by the same lock as .venv.
$(BENCH_STAMP): pyproject.toml deploy/requirements.lock
	@BENCH_PYTHON=$(BENCH_PYTHON) .ci/system-packages bench
	rm -rf $(BENCH_VENV)
	$(BENCH_PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/pip install --quiet --constraint deploy/requirements.lock -e '.[test]'
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
bench: $(BENCH_STAMP)
	@BENCH_PYTHON=$(BENCH_PYTHON) .ci/system-packages bench
	PYTHONPATH=. $(BENCH_VENV)/bin/python bench/run.py

# A bounded soak (bench/soak.py): a minute of mixed traffic; fails on any error or on memory growth.
soak: $(STAMP)
	PYTHONPATH=. $(BIN)/python bench/soak.py --seconds 60

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .mypy_cache .ruff_cache
