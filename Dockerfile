# syntax=docker/dockerfile:1
# One image for the whole system: the five servers, the trainer service and the offline jobs.
# The first argument picks what runs (docker/entrypoint.py):
#   gateway | content | collaborative | success | ranker | trainer | train | retrain | copy-catalog | pmis
#
#   docker build -t pmis-recommender:0.1.0 .
#   docker run --rm -p 50051:50051 -v "$PWD/var:/var/pmis:ro" pmis-recommender:0.1.0 content
#
# Dependencies are pinned twice: exact versions in pyproject.toml and every transitive one in
# constraints.txt (bundles refuse to load under other scikit-learn / LightGBM versions, so the
# image that serves must match the one that trained). Protos are generated at build time and baked in.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- build: venv + generated protos
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src

# protoc (grpcio-tools, pinned by constraints.txt) lives in its own venv and never reaches the image.
COPY constraints.txt pyproject.toml ./
RUN python -m venv /opt/protoc \
 && /opt/protoc/bin/pip install -c constraints.txt grpcio-tools

# The runtime dependencies first (their own layer, rebuilt only when the pins change) ...
RUN python -m venv /opt/venv \
 && python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
      > /tmp/requirements.txt \
 && /opt/venv/bin/pip install -c constraints.txt -r /tmp/requirements.txt

# ... then the code, with pmis/v1/*_pb2*.py generated before the package is built so they ship in it.
COPY protos ./protos
COPY pmis ./pmis
COPY models ./models
COPY services ./services
COPY gateway ./gateway
RUN /opt/protoc/bin/python protos/generate.py --force \
 && /opt/venv/bin/pip install --no-deps -c constraints.txt .

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
# libgomp1: OpenMP runtime that LightGBM and implicit link against (not in the slim base).
# Unpinned on purpose: Debian's security updates for the base release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 pmis \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin pmis \
 && mkdir -p /var/pmis /app \
 && chown 10001:10001 /var/pmis

COPY --from=build /opt/venv /opt/venv
COPY docker/entrypoint.py /app/entrypoint.py

# PMIS_HOST=0.0.0.0: in a pod the servers must listen on the pod IP, not loopback.
# /tmp is the only writable path at run time (the manifests mount an emptyDir there and keep the
# root filesystem read-only): matplotlib's cache and HOME point into it.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OPENBLAS_NUM_THREADS=1 \
    PMIS_HOST=0.0.0.0 \
    PMIS_HOME=/var/pmis \
    PMIS_BUNDLES=/var/pmis/bundles \
    PMIS_CATALOG=/var/pmis/data/catalog.db \
    MPLCONFIGDIR=/tmp/matplotlib \
    HOME=/tmp

# Fail the build, not the pod, if a module or a native library is missing (imports every server).
RUN python -c "import pmis.v1.gateway_pb2_grpc, pmis.v1.trainer_pb2_grpc, gateway.server, services.trainer.server, \
services.content.server, services.collaborative.server, services.success.server, services.ranker.server, lightgbm, implicit"

WORKDIR /app
USER 10001:10001
# gRPC: gateway 50050, content 50051, collaborative 50052, success 50053, ranker 50054, trainer 50055;
# Prometheus metrics on 9100-9105 in the same order.
EXPOSE 50050-50055 9100-9105
ENTRYPOINT ["/opt/venv/bin/python", "/app/entrypoint.py"]
CMD ["gateway"]
