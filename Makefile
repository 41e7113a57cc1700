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

.PHONY: help infra preview destroy outputs configure rotate rotate-db backup backups restore gc \
	credentials verify demo demo-down lint docs test test-unit test-images test-integration molecule bench \
	example clean read-routes

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

rotate-db: $(BIN)/.deploy-installed ## New database password for MLflow, on every host, without downtime
	$(ANSIBLE_PLAYBOOK) rotate_db.yml

backup: $(BIN)/.deploy-installed ## Back the database up now (the daily backup's unit), print its S3 key
	$(ANSIBLE_PLAYBOOK) backup.yml

backups: $(BIN)/.deploy-installed ## List the database backups in the bucket (oldest first)
	$(ANSIBLE_PLAYBOOK) backups.yml

# BACKUP and CONFIRM go to Ansible as JSON strings: no quoting surprises from the shell.
restore: $(BIN)/.deploy-installed ## Restore the database: BACKUP=<key>|latest CONFIRM=yes (stops MLflow meanwhile)
	$(ANSIBLE_PLAYBOOK) restore.yml -e '$(subst ','"'"',{"mlflow_restore_backup": "$(subst ",,$(BACKUP))", "mlflow_restore_confirm": "$(subst ",,$(CONFIRM))"})'

gc: $(BIN)/.deploy-installed ## Purge runs/experiments deleted over mlflow_gc_older_than ago, artifacts included
	$(ANSIBLE_PLAYBOOK) gc.yml

credentials: $(BIN)/.deploy-installed ## Print the export lines a client needs (USER=name for another user)
	@$(BIN)/python -m inventory_plugin.credentials $(if $(ROTATE_USER),--user $(ROTATE_USER),)

verify: $(BIN)/.deploy-installed ## Check the stack from outside: health, TLS, logins, a run round-trips
	@$(BIN)/python -m inventory_plugin.verify

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

# --- read-only users ------------------------------------------------------------------------------
# The requests users with role `read` may make come from the pinned MLflow release's own route
# table: after changing mlflow_version, this installs that release aside and rewrites the table.
ROUTES_VENV := .cache/mlflow-routes-venv
ROUTES_SCRIPT := ansible/roles/nginx_basic_auth/files/mlflow_routes.py
MLFLOW_PINNED = $(shell sed -n 's/^mlflow_version: *"\(.*\)"/\1/p' ansible/roles/mlflow/defaults/main.yml)

# The pinned release in a virtualenv of its own (full mlflow: numpy, pandas...; the deploy venv
# needs none of that). The unit tests read its route table too.
$(ROUTES_VENV)/.installed: ansible/roles/mlflow/defaults/main.yml
	@test -x $(ROUTES_VENV)/bin/python || $(PYTHON) -m venv $(ROUTES_VENV)
	@echo ">> installing mlflow==$(MLFLOW_PINNED) into $(ROUTES_VENV) (its route table)"
	@$(ROUTES_VENV)/bin/pip install --quiet --disable-pip-version-check "mlflow==$(MLFLOW_PINNED)"
	@touch $@

read-routes: $(ROUTES_VENV)/.installed ## Rewrite the read-only users' route table from the pinned MLflow (after an upgrade)
	$(ROUTES_VENV)/bin/python $(ROUTES_SCRIPT)
	@git --no-pager diff --stat -- ansible/roles/nginx_basic_auth/files/mlflow_routes.json

# --- quality -------------------------------------------------------------------------------------
lint: $(BIN)/.dev-installed ## ruff, mypy (strict), yamllint and ansible-lint (production profile)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@# infra/, inventory_plugin/ and __main__.py against pulumi's and pulumi-aws's type hints.
	$(BIN)/mypy
	$(BIN)/yamllint --strict .
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/ansible-lint --offline

docs: $(BIN)/.deploy-installed ## Regenerate the README tables: settings (Pulumi.yaml), role variables (argument_specs)
	$(BIN)/python -m infra.config_table --write
	PYTHONPATH=$(CURDIR) $(BIN)/python ansible/role_tables.py --write

test-unit: $(BIN)/.dev-installed $(ROUTES_VENV)/.installed ## Unit tests only (no root, about a minute)
	$(BIN)/pytest tests/unit -q

test-integration: $(BIN)/.dev-installed ## End-to-end tests on real test hosts (Linux, root; MLFLOW_AWS_TESTBED_SLOT=N)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest tests/integration -q -m "integration and not scale" --durations=30
	@# Its own session: three hosts behind a stand-in load balancer, after the two-host bed is down.
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/pytest tests/integration -q -m scale --durations=10

test-images: $(BIN)/.dev-installed ## Build (or find) the trees the test hosts boot (root; minutes on a fresh machine)
	$(BIN)/python -m standin build-images

# The test hosts' trees (debootstrap: minutes on a fresh machine) build while lint and the unit
# tests run; each step's output is printed whole when it ends.
test: $(BIN)/.dev-installed ## Everything CI runs: lint, unit, end-to-end and molecule tests
	@$(MAKE) --no-print-directory -j3 --output-sync=target lint test-unit test-images
	@$(MAKE) --no-print-directory test-integration molecule

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
