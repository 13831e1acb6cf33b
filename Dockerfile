# syntax=docker/dockerfile:1
# The kryten-pipeline code location: a Dagster gRPC code server on port 4000 (README "Deploying").
#
#   docker build -t kryten-pipeline:0.1.0 .
#   docker run --rm -p 4000:4000 --env-file kryten.env -v kryten-data:/var/lib/kryten kryten-pipeline:0.1.0
#
# The default command is a CMD, not an ENTRYPOINT, on purpose: the Docker and Kubernetes run launchers start
# run workers from this same image with their own command (`dagster api execute_run …`), which an ENTRYPOINT
# would swallow. The same image can also run the webserver and the daemon (README "Deploying").
# kryten_pipeline_tests/test_code_server.py runs this CMD (on 127.0.0.1 and a free port) and loads the
# definitions through deploy/workspace.yaml.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
RUN python -m venv /opt/venv
# Dependencies first, exactly as pinned in pyproject.toml: a code change does not reinstall them.
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && pip install -r requirements.txt
COPY kryten_pipeline ./kryten_pipeline
RUN pip install --no-deps . \
    && python -c "import kryten_pipeline.definitions"

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DAGSTER_HOME=/opt/dagster/dagster_home \
    KRYTEN_DATA_DIR=/var/lib/kryten
RUN groupadd --system --gid 10001 kryten \
    && useradd --system --uid 10001 --gid kryten --home-dir /opt/dagster --shell /usr/sbin/nologin kryten \
    && mkdir -p /opt/dagster/dagster_home /opt/dagster/app /var/lib/kryten \
    && chown -R kryten:kryten /opt/dagster /var/lib/kryten
COPY --from=build /opt/venv /opt/venv
# The production instance (PostgreSQL, credentials from DAGSTER_PG_* at run time) and the gRPC workspace, for
# run workers started from this image and for webserver/daemon containers built from it.
COPY --chown=kryten:kryten deploy/dagster.yaml deploy/workspace.yaml /opt/dagster/dagster_home/
USER kryten
WORKDIR /opt/dagster/app
# Snapshots, rejects (and the embedded nats-server's store when NATS_URL is unset): mount a volume here.
VOLUME ["/var/lib/kryten"]
EXPOSE 4000
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s \
    CMD ["dagster", "api", "grpc-health-check", "-p", "4000"]
CMD ["dagster", "code-server", "start", "-m", "kryten_pipeline.definitions", "-h", "0.0.0.0", "-p", "4000"]
