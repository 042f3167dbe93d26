# Two commands: `make run` (the service on embedded defaults) and `make test` (the suite).
PYTHON ?= python3
VENV   := .venv
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

# Local-development defaults so the endpoints and API work out of the box; production sets
# its own values in the environment (see README, "Configuration").
export STRIPE_WEBHOOK_SECRETS ?= whsec_local_platform_dev
export STRIPE_CONNECT_WEBHOOK_SECRETS ?= whsec_local_connect_dev
export API_TOKEN ?= dev-token
export STRIPE_PLATFORM_ACCOUNT ?= acct_1LocalPlatform

.PHONY: run test install lint demo bench clean

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[dev]'
	rm -f $(VENV)/.installed-*; touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(VENV)/bin/mismatch serve

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(VENV)/bin/python -m standins.demo

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/all.py $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) instance
