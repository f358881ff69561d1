# syntax=docker/dockerfile:1
#
# Tearline API image. Production mode: the container refuses to start without TEARLINE_ISSUER,
# a PostgreSQL TEARLINE_DATABASE_URL and production keys (see README.md, "Operations").
#
#   docker build -t tearline .
#   docker run --rm -p 8000:8000 \
#     -e TEARLINE_ISSUER=https://tearline.example.org \
#     -e TEARLINE_DATABASE_URL=postgresql+psycopg://tearline:...@db:5432/tearline \
#     -e TEARLINE_KEY_PROVIDER=env --env-file keys.env \
#     tearline

ARG PYTHON_IMAGE=python:3.11-slim

# --- build: the project and its runtime dependencies in a virtualenv -------------------------
FROM ${PYTHON_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
COPY pyproject.toml ./
COPY app/ app/
# Non-editable and without the dev extras: no test or lint tools in the image. The base image's
# pip is used as it is (its version comes with the pinned base image).
RUN pip install .

# --- runtime ---------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

# A fixed uid/gid so volume ownership is predictable across hosts; no login shell, no home.
RUN groupadd --system --gid 10001 tearline \
 && useradd --system --uid 10001 --gid tearline --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin tearline \
 && mkdir -p /var/lib/tearline \
 && chown tearline:tearline /var/lib/tearline \
 && chmod 0700 /var/lib/tearline

COPY --from=build /opt/venv /opt/venv

WORKDIR /app
# Code, migrations and policies stay owned by root: the service cannot rewrite what it runs.
COPY pyproject.toml alembic.ini ./
COPY app/ app/
COPY migrations/ migrations/
COPY policies/ policies/
RUN /opt/venv/bin/python -m compileall -q app migrations

# PYTHONPATH=/app: app/config.py finds alembic.ini, migrations/ and policies/ next to the `app`
# package it was imported from. The installed copy in site-packages has none of them beside it,
# so the identical copy in /app must be the one imported.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TEARLINE_ENV=production \
    TEARLINE_DATA_DIR=/var/lib/tearline

# Numeric, so that a runtime that checks for a non-root user (Kubernetes' runAsNonRoot) can
# tell without the image's /etc/passwd; 10001 is the `tearline` user made above.
USER 10001:10001

EXPOSE 8000

# /healthz says the process answers; no curl in the slim image, so the standard library asks.
# Proxies from the environment are ignored: the probe must reach this container, not a proxy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request as u; o = u.build_opener(u.ProxyHandler({})); sys.exit(0 if o.open('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"]

# Production `serve` does not migrate (only development does), so the schema is brought to head
# first; exec hands PID 1 to the server so it receives SIGTERM directly.
CMD ["sh", "-c", "tearline db upgrade && exec tearline serve --host 0.0.0.0 --port 8000"]
