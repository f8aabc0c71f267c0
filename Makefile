# Tollgate — see README.md. `make run` serves; `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TOLLGATE := $(VENV)/bin/tollgate
export REDIS_URL_TEST := $(or $(REDIS_URL),redis://127.0.0.1:6379/15)

LOCAL_MODEL ?= 1

.PHONY: install install-test agents run serve test services seed-models bench bench-streams bench-peer wrk soak lint clean local-model local-model-stop

$(VENV)/.base: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.base
install-test: $(VENV)/.test


run: install
	@if [ "$(LOCAL_MODEL)" != "0" ]; then \
	  scripts/local_model.sh start || echo "local model: not available (reason above); the gateway starts without it"; \
	fi
	$(TOLLGATE) demo
	$(PY) -m service.server

local-model:
	@scripts/local_model.sh start

local-model-stop:
	@scripts/local_model.sh stop

serve: install
	$(PY) -m service.server

seed-models: install
	$(TOLLGATE) seed-models $(if $(FILE),--file $(FILE))

services:
	@scripts/services.sh

# The real agent clients the tests run (docs/agents.md, docs/agents-openai.md), pinned, into
# .agents/ from npm; each once (a stamp per version), quietly
CLAUDE_CODE_VERSION ?= 2.1.332
CODEX_VERSION ?= 0.171.0
AGENTS ?= .agents
NPM_INSTALL = npm install --prefix $(AGENTS) --no-audit --no-fund --no-update-notifier --loglevel=error
$(AGENTS)/.claude-code-$(CLAUDE_CODE_VERSION):
	@command -v npm >/dev/null 2>&1 || { echo "agents: npm is needed (apt-get install npm)" >&2; exit 1; }
	@$(NPM_INSTALL) @anthropic-ai/claude-code@$(CLAUDE_CODE_VERSION) >/dev/null
	@rm -f $(AGENTS)/.claude-code-* && touch $@
$(AGENTS)/.codex-$(CODEX_VERSION):
	@command -v npm >/dev/null 2>&1 || { echo "agents: npm is needed (apt-get install npm)" >&2; exit 1; }
	@$(NPM_INSTALL) @openai/codex@$(CODEX_VERSION) >/dev/null
	@touch $@
agents: $(AGENTS)/.claude-code-$(CLAUDE_CODE_VERSION) $(AGENTS)/.codex-$(CODEX_VERSION)

# the cluster scripts/services.sh starts (tests/test_cluster.py)
export REDIS_CLUSTER_URL_TEST ?= redis+cluster://127.0.0.1:7001

# the import contracts (.importlinter), then pytest on TEST_WORKERS processes (pytest-xdist; each
# with its own PostgreSQL database and Redis db, tests/conftest.py); the local model is stopped
# afterwards when this run started it. PYTEST_ARGS replaces the defaults (e.g. PYTEST_ARGS=tests/test_chat.py).
TEST_WORKERS ?= 3
PYTEST_ARGS ?= -n $(TEST_WORKERS) --dist loadfile
test: install-test services agents
	@started=0; scripts/local_model.sh running || started=1; \
	scripts/local_model.sh start || exit 1; \
	$(VENV)/bin/lint-imports --no-cache && $(PY) -m pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$started = 1 ]; then scripts/local_model.sh stop; fi; \
	exit $$status


# every scenario; BENCH_ONLY=routing,log,cache,logs_page (any of them, and `standard` for the
# earlier ones) runs only those and replaces their section of bench/results.* (docs/benchmarks.md)
# BENCH_ONLY=against BENCH_AGAINST=<git revision>: this checkout's gateway against that commit's
bench: install-test services wrk
	$(PY) -m bench.run

# N concurrent paced streams (BENCH_STREAMS, default 1000), direct and through one gateway process
bench-streams: install-test services
	$(PY) -m bench.streams

# the same run plus LiteLLM's proxy side by side, from its own virtual environment
PEER_VENV ?= .venv-peer
LITELLM_VERSION ?= 1.106.2
bench-peer: install-test services wrk
	@test -x $(PEER_VENV)/bin/litellm || { echo "bench-peer: installing litellm[proxy]==$(LITELLM_VERSION) into $(PEER_VENV)"; \
	  $(PYTHON) -m venv $(PEER_VENV) && $(PEER_VENV)/bin/pip install -q 'litellm[proxy]==$(LITELLM_VERSION)'; }
	BENCH_PEER=$(PEER_VENV)/bin/litellm $(PY) -m bench.run
	BENCH_PEER=$(PEER_VENV)/bin/litellm $(PY) -m bench.streams

wrk:
	@command -v wrk >/dev/null 2>&1 || { echo "bench: installing wrk from Debian's packages"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk) >/dev/null 2>&1; \
	  command -v wrk >/dev/null 2>&1 || { echo "bench: wrk is not installed (apt-get install wrk)" >&2; exit 1; }; }

soak: install-test services
	$(PY) scripts/soak.py

lint: install-test
	$(PY) -m pyflakes config core frontdoors service providers tests bench scripts

clean: local-model-stop
	rm -rf $(VENV) data run .pytest_cache
