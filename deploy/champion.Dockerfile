# The champion image: the prediction image with the registry's current champion models inside.
#
#   fitml bento export --profile prod --workdir var --out dist/champion   # from the registry
#   docker build -f deploy/champion.Dockerfile \
#     --build-arg PREDICTION_IMAGE=fitml-prediction:<commit> \
#     -t fitml-prediction-champion:<commit>-<fit version>-<size version> dist/champion
#
# (`make champion-image` does both.) The build context is the exported folder only: a BentoML
# model store (fitml-<kind>-<alias>/v<version>/) and its manifest, fitml-models.json. The
# service serves these versions (FITML_MODEL_SOURCE=store) and never asks the MLflow registry,
# so the image is a release of code and models together that rolls back as one; it still
# needs PostgreSQL (the Feast registry) and Redis (online features) like the prediction image.
# Run it with FITML_MODEL_SOURCE=registry to follow the registry's aliases instead.
ARG PREDICTION_IMAGE=fitml-prediction:latest
FROM ${PREDICTION_IMAGE}
# Owned by root and read-only for the service's user: the packaged models never change.
COPY --chown=root:root . /opt/fitml/models
ENV FITML_MODEL_SOURCE=store \
    FITML_MODEL_STORE=/opt/fitml/models
ARG FIT_VERSION=unknown
ARG SIZE_VERSION=unknown
LABEL org.opencontainers.image.title="fitml-prediction-champion" \
      ai.fitml.fit-model.version="${FIT_VERSION}" \
      ai.fitml.size-model.version="${SIZE_VERSION}"
