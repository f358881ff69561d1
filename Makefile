# Two commands matter: `make run` and `make test`. Everything they need is set up here.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP_QUIET := --quiet --disable-pip-version-check

.PHONY: run test lint static typecheck pytest pytest-postgres bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/pip install $(PIP_QUIET) --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/pip install $(PIP_QUIET) -e '.[dev]' 2>&1 | grep -v -e "^WARNING: Location" -e "^\s*$$" || true
	@$(BIN)/python -c "import app, fastapi, cedarpy, jose, psycopg" || (echo "install failed" && exit 1)
	@touch $(STAMP)

run: $(STAMP)
	$(BIN)/tearline dev init
	$(BIN)/tearline serve --host 127.0.0.1 --port 8000

lint: $(STAMP)
	$(BIN)/ruff check app tests bench migrations

# Static security checks: bandit at medium severity and up (every exclusion is a `# nosec BXXX`
# beside its justification), and hadolint on the Dockerfile (linted, never built here).
static: $(STAMP)
	$(BIN)/bandit -q -r app migrations -ll
	$(BIN)/hadolint Dockerfile

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	TEARLINE_TEST_BACKEND=sqlite $(BIN)/pytest -q -p no:cacheprovider -n 2

pytest-postgres: $(STAMP)
	@if [ -n "$$TEARLINE_TEST_DATABASE_URL" ]; then \
		echo "== PostgreSQL: $$TEARLINE_TEST_DATABASE_URL"; \
		TEARLINE_TEST_BACKEND=postgres $(BIN)/pytest -q -p no:cacheprovider -n 2; \
	else \
		echo "== PostgreSQL run skipped: TEARLINE_TEST_DATABASE_URL is not set"; \
	fi

test: lint static typecheck pytest pytest-postgres

bench: $(STAMP)
	$(BIN)/python bench/run.py

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
