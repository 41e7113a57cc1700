# mlflow-aws: the user interface. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

STACK ?= dev
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The examples run in their own client virtualenv: the operator's .venv carries no scikit-learn.
CLIENT_VENV := .venv-client
CLIENT_BIN := $(CLIENT_VENV)/bin
# examples/connection.py is the examples' shared connection check, not an example.
EXAMPLES := $(filter-out connection,$(sort $(basename $(notdir $(wildcard examples/*.py)))))
export STACK
# MLflow clients phone home by default; ours (tests, examples, demo) do not.
export MLFLOW_DISABLE_TELEMETRY ?= true
# A saved outputs file (air-gapped use) may be given relative to the repo; Ansible runs in ansible/.
export MLFLOW_AWS_OUTPUTS_FILE := $(if $(MLFLOW_AWS_OUTPUTS_FILE),$(abspath $(MLFLOW_AWS_OUTPUTS_FILE)))
# Ansible reads ansible.cfg from its working directory: every playbook runs from ansible/.
ANSIBLE_PLAYBOOK := cd ansible && ../$(BIN)/ansible-playbook
# USER is set by every login shell; only a USER given on the make command line picks a user.
ROTATE_USER := $(if $(filter command line,$(origin USER)),$(USER),)

.PHONY: help infra preview destroy outputs configure rotate credentials demo demo-down \
	lint docs test test-unit test-integration molecule bench example clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-17s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# --- virtualenvs: created on first use, refreshed when a requirements file changes ---------------
$(BIN)/.deploy-installed: requirements.txt constraints.txt
	@test -x $(BIN)/python || { echo ">> creating $(VENV)"; $(PYTHON) -m venv $(VENV); }
	@echo ">> installing deploy requirements into $(VENV)"
	@$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	@touch $@

$(BIN)/.dev-installed: $(BIN)/.deploy-installed requirements-dev.txt constraints.txt
	@echo ">> installing test requirements into $(VENV)"
	@$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	@touch $@

$(CLIENT_BIN)/.client-installed: requirements-client.txt constraints-client.txt
	@test -x $(CLIENT_BIN)/python || { echo ">> creating $(CLIENT_VENV)"; $(PYTHON) -m venv $(CLIENT_VENV); }
	@echo ">> installing client requirements into $(CLIENT_VENV)"
	@$(CLIENT_BIN)/pip install --quiet --disable-pip-version-check -r requirements-client.txt -c constraints-client.txt
	@touch $@

# --- AWS side (Pulumi) ---------------------------------------------------------------------------
infra: $(BIN)/.deploy-installed ## Create or update the AWS stack (STACK=dev): pulumi up
	@$(BIN)/python -m infra.preflight --stack $(STACK)
	pulumi up --stack $(STACK) --yes

preview: $(BIN)/.deploy-installed ## Show what `make infra` would change, without changing it
	@$(BIN)/python -m infra.preflight --stack $(STACK)
	pulumi preview --stack $(STACK) --diff

destroy: $(BIN)/.deploy-installed ## Delete every AWS resource of the stack (RDS keeps a final snapshot)
	@$(BIN)/python -m infra.preflight --stack $(STACK) --existing
	pulumi destroy --stack $(STACK)

outputs: $(BIN)/.deploy-installed ## Print the stack outputs (secrets stay hidden)
	@$(BIN)/python -m infra.preflight --stack $(STACK) --existing --cli-only
	@pulumi stack output --stack $(STACK) --json

# --- host side (Ansible) -------------------------------------------------------------------------
configure: $(BIN)/.deploy-installed ## Configure the stack's hosts: MLflow behind TLS + basic auth
	$(ANSIBLE_PLAYBOOK) site.yml

rotate: $(BIN)/.deploy-installed ## New passwords for all users (or USER=name), applied without downtime
	@$(BIN)/python -m inventory_plugin.credentials --forget $(if $(ROTATE_USER),--user $(ROTATE_USER),--all-users)
	$(ANSIBLE_PLAYBOOK) site.yml

credentials: $(BIN)/.deploy-installed ## Print the export lines a client needs (USER=name for another user)
	@$(BIN)/python -m inventory_plugin.credentials $(if $(ROTATE_USER),--user $(ROTATE_USER),)

# NAME is checked before anything is installed; ARGS go to the script (e.g. ARGS="--experiment x").
# No usage telemetry: the client talks to your server only.
example: ## Run an example on the stack: NAME=iris_random_forest|llm_evaluation [USER=name]
	@if [[ " $(EXAMPLES) " != *" $(NAME) "* || -z "$(NAME)" ]]; then \
	  echo "make example: $(if $(NAME),unknown example '$(NAME)',NAME is missing); one of: $(EXAMPLES)" \
	  "(e.g. make example NAME=$(firstword $(EXAMPLES)))" >&2; exit 2; fi
	@$(MAKE) --no-print-directory $(BIN)/.deploy-installed $(CLIENT_BIN)/.client-installed
	@exports="$$($(BIN)/python -m inventory_plugin.credentials $(if $(ROTATE_USER),--user $(ROTATE_USER),))" \
	  || exit 2; eval "$$exports"; \
	  MLFLOW_DISABLE_TELEMETRY=true $(CLIENT_BIN)/python examples/$(NAME).py $(ARGS)

# --- trying it without AWS -----------------------------------------------------------------------
demo: $(BIN)/.dev-installed ## Local demo (Linux, root): a test host with the whole stack, configured
	@$(BIN)/python -m standin.demo up

demo-down: $(BIN)/.dev-installed ## Remove everything `make demo` created
	@$(BIN)/python -m standin.demo down

# --- quality -------------------------------------------------------------------------------------
lint: $(BIN)/.dev-installed ## ruff, yamllint and ansible-lint (production profile)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/yamllint --strict .
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/ansible-lint --offline

docs: $(BIN)/.deploy-installed ## Regenerate the README tables: settings (Pulumi.yaml), role variables (argument_specs)
	$(BIN)/python -m infra.config_table --write
	PYTHONPATH=$(CURDIR) $(BIN)/python ansible/role_tables.py --write

test-unit: $(BIN)/.dev-installed ## Unit tests only (no root, about a minute)
	$(BIN)/pytest tests/unit -q

test-integration: $(BIN)/.dev-installed ## End-to-end tests on real test hosts (Linux, root; MLFLOW_AWS_TESTBED_SLOT=N)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest tests/integration -q -m "integration and not scale"
	@# Its own session: three hosts behind a stand-in load balancer, after the two-host bed is down.
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest tests/integration -q -m scale

test: lint test-unit test-integration molecule ## Everything CI runs: lint, unit, end-to-end and molecule tests

molecule: $(BIN)/.dev-installed ## Molecule scenario: converge, idempotence, verify on a test host
	@# destroy, syntax, create, converge, idempotence, verify, destroy: ansible/molecule/default.
	@# Molecule's state lives in .cache and starts afresh; destroy.yml still takes down a bed a
	@# killed run left up (it goes by the harness's state dir, not by molecule's state).
	@# MLFLOW_AWS_TESTBED_SLOT=N: a test bed slot of its own, and folders with the suffix N.
	@rm -rf .cache/molecule-ephemeral$(MLFLOW_AWS_TESTBED_SLOT); started=$$SECONDS; \
	cd ansible && MOLECULE_EPHEMERAL_DIRECTORY="$(CURDIR)/.cache/molecule-ephemeral$(MLFLOW_AWS_TESTBED_SLOT)" \
		PATH="$(CURDIR)/$(BIN):$$PATH" molecule test; status=$$?; \
	took="$$((SECONDS - started)) s"; \
	if [ $$status -eq 0 ]; then echo ">> molecule test passed in $$took"; else \
	echo ">> molecule test FAILED (exit $$status, after $$took): DETAILS above names the failed step;" \
	"its Ansible output (or the idempotence step's list of changed tasks) is just before it."; fi; \
	exit $$status

# Its own one-host bed (.cache/bench-testhosts) in test bed slot 2, so it runs beside `make test`
# (slots 0 and 1; ARGS="--slot N" picks another), up only while it runs; not part of `make test`.
# wrk, the load generator, is Debian's, installed inside the test host (nothing on this machine).
bench: $(BIN)/.dev-installed ## Benchmarks on a local test host (Linux, root, ~20 min; ARGS="--help")
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m bench $(ARGS)

clean: ## Remove caches (keeps .venv and .credentials)
	rm -rf .cache .pytest_cache .ruff_cache
