# syntax=docker/dockerfile:1
# One image for every flowmetrics service; the command picks which one:
#   docker run --env-file .env IMAGE migrate | collect | process | serve
# docker-compose.yml runs each as its own service.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: flowmetrics and its dependencies in a virtualenv ------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY schemas/ schemas/
COPY collectors/ collectors/
COPY processor/ processor/
COPY api/ api/
COPY infra/ infra/
# Dependencies as binary wheels only: nothing is compiled, so the image needs
# no compiler in any stage. The venv's own pip and setuptools go at the end.
RUN python -m pip wheel --no-deps --wheel-dir /wheels . \
 && python -m venv /opt/flowmetrics \
 && /opt/flowmetrics/bin/python -m pip install --only-binary=:all: /wheels/*.whl \
 && /opt/flowmetrics/bin/python -m pip uninstall --yes pip setuptools

# --- runtime: the virtualenv, a non-root user, nothing else -------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="flowmetrics" \
      org.opencontainers.image.description="Engineering-flow analytics: collectors, processor and API" \
      org.opencontainers.image.licenses="Apache-2.0"
# The base image's pip and setuptools are build tools: they do not ship.
RUN python -m pip uninstall --yes pip setuptools wheel \
 && groupadd --system --gid 10001 flowmetrics \
 && useradd --system --uid 10001 --gid flowmetrics --home-dir /var/lib/flowmetrics \
      --create-home --shell /usr/sbin/nologin flowmetrics
COPY --from=build /opt/flowmetrics /opt/flowmetrics
ENV PATH=/opt/flowmetrics/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FLOW_HOME=/var/lib/flowmetrics \
    FLOW_COLLECTOR_HOST=0.0.0.0 \
    FLOW_API_HOST=0.0.0.0
WORKDIR /var/lib/flowmetrics
USER 10001:10001
# 8080: collectors, 8000: API
EXPOSE 8080 8000
ENTRYPOINT ["flowmetrics"]
CMD ["--help"]
