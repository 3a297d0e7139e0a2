# Two commands on a fresh machine: `make run` (sets up and serves the app) and `make test`.
ARGS ?=

.PHONY: run test setup
setup:
	scripts/setup.sh

run: setup
	.venv/bin/python app.py $(ARGS)

test:
	scripts/test.sh
