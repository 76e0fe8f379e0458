# fitml images: dependency stages built from the locks, three targets.
#
#   docker build --target prediction -t fitml-prediction .   # BentoML /recommend on :3000
#   docker build --target session    -t fitml-session .      # FastAPI try-on sessions on :8000
#   docker build --target job        -t fitml-job .          # the `fitml` CLI for batch jobs
#
# The services' dependency layer (requirements-serving.lock) is built once and shared by the
# prediction and session images; the job image adds one layer on top of it with what only the
# batch jobs import (requirements-runtime.lock: tuning, drift reports, Dask). Both locks pin
# exactly what requirements.lock pins. Only the small code layer changes from commit to
# commit. Every image runs as the unprivileged user `fitml` and holds no secret:
# configuration and credentials come from the environment and mounted files at run time (see
# .env.example and deploy/). Where no public registry is reachable, build FROM a local Python
# 3.11 bookworm image: --build-arg BASE_IMAGE=localhost/python:3.11-bookworm.
#
# The champion image (the prediction image with the registry's champion models inside) is
# built FROM the prediction image by deploy/champion.Dockerfile (`make champion-image`).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# The OS layer every target runs on: LightGBM's OpenMP runtime and the unprivileged user.
FROM ${BASE_IMAGE} AS os
RUN apt-get update -q \
    && apt-get install -y -q --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb \
    && groupadd --system --gid 10001 fitml \
    && useradd --system --uid 10001 --gid fitml --home-dir /home/fitml --create-home fitml \
    && mkdir -p /var/lib/fitml \
    && chown fitml:fitml /var/lib/fitml
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# The services' locked third-party packages, in a virtual environment (no compilers needed:
# all wheels). pip's compiled bytecode stays: the root filesystem is read-only at run time, and
# without it every start would compile the imports again. The packages' own test suites go
# (pandas, numpy, scipy, pyarrow...: nothing imports them at run time; ibis keeps its own,
# whose backends import helpers from it).
FROM os AS deps
COPY requirements-serving.lock /tmp/requirements-serving.lock
RUN python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install -q --no-deps -r /tmp/requirements-serving.lock \
    && find /opt/venv/lib -depth -type d -name tests -not -path '*/ibis/*' -exec rm -rf {} + \
    && /opt/venv/bin/python -c "import feast, mlflow, bentoml, lightgbm, fastapi, psycopg, redis" \
    && rm /tmp/requirements-serving.lock

# The batch jobs' packages on top: the rest of requirements-runtime.lock (pip keeps the
# services' packages, whose pins are the same). Evidently's `tests` are its product (test
# suites of drift checks), so they stay.
FROM deps AS deps-job
COPY requirements-runtime.lock /tmp/requirements-runtime.lock
RUN /opt/venv/bin/pip install -q --no-deps -r /tmp/requirements-runtime.lock \
    && find /opt/venv/lib -depth -type d -name tests -not -path '*/ibis/*' \
        -not -path '*/evidently/*' -exec rm -rf {} + \
    && /opt/venv/bin/python -c "import feast, mlflow, bentoml, evidently, optuna, lightgbm, distributed" \
    && rm /tmp/requirements-runtime.lock

# fitml itself, built to a wheel (its code only: the dependencies are above).
FROM deps AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ml_pipeline ml_pipeline
COPY features features
COPY training training
COPY serving serving
COPY evaluation evaluation
RUN /opt/venv/bin/pip wheel -q --no-deps --wheel-dir /wheels .

# The services' base: their packages and fitml.
FROM deps AS app
COPY --from=build /wheels /wheels
RUN /opt/venv/bin/pip install -q --no-deps /wheels/*.whl \
    && rm -rf /wheels \
    && fitml --help >/dev/null
USER fitml
WORKDIR /home/fitml
# Everything a run writes (offline tables, MLflow artifacts, BentoML store, session state)
# lives under the work directory: a volume shared by the job and the services.
ENV FITML_PROFILE=prod \
    FITML_WORKDIR=/var/lib/fitml
VOLUME ["/var/lib/fitml"]

# The prediction service: resolves the MLflow registry's champion at start (or serves the
# models already in the work directory's BentoML store with FITML_MODEL_SOURCE=store; the
# champion image serves the models packaged in it, deploy/champion.Dockerfile).
FROM app AS prediction
ENV FITML_PORT=3000
EXPOSE 3000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['FITML_PORT']}/readyz\", timeout=2)"]
CMD ["sh", "-c", "exec fitml serve --profile \"$FITML_PROFILE\" --workdir \"$FITML_WORKDIR\" --host 0.0.0.0 --port \"$FITML_PORT\""]

# The try-on session service: API keys from FITML_API_KEYS_FILE (a mounted secret).
FROM app AS session
ENV FITML_PORT=8000 \
    FITML_PREDICTION_URL=http://127.0.0.1:3000
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['FITML_PORT']}/readyz\", timeout=2)"]
CMD ["sh", "-c", "exec fitml session-service --profile \"$FITML_PROFILE\" --workdir \"$FITML_WORKDIR\" --host 0.0.0.0 --port \"$FITML_PORT\" --prediction-url \"$FITML_PREDICTION_URL\""]

# Batch jobs: `fitml pipeline run`, `fitml train`, `fitml features materialize`,
# `fitml drift`, `fitml forget-user ...`, `fitml bento export`; run to completion, so no
# health check. (The same stanza as `app`, on the jobs' packages.)
FROM deps-job AS job
COPY --from=build /wheels /wheels
RUN /opt/venv/bin/pip install -q --no-deps /wheels/*.whl \
    && rm -rf /wheels \
    && fitml --help >/dev/null
USER fitml
WORKDIR /home/fitml
ENV FITML_PROFILE=prod \
    FITML_WORKDIR=/var/lib/fitml
VOLUME ["/var/lib/fitml"]
HEALTHCHECK NONE
ENTRYPOINT ["fitml"]
CMD ["--help"]
