# syntax=docker/dockerfile:1
# The GPU worker image: `bnrank worker` with the CUDA build of torch. It also holds the migration entrypoint.
# Build from the repository root:  docker build -f docker/worker.Dockerfile -t bnrank-worker .
# Runs on a host with the NVIDIA driver and the NVIDIA Container Toolkit (compose reserves the GPU).
#
# Base: the CUDA runtime comes with torch itself. Its Linux wheels on PyPI are CUDA builds that depend on
# NVIDIA's own wheels (nvidia-cuda-runtime, cuBLAS, cuDNN, NCCL ...), so an nvidia/cuda base image would add
# a second, possibly different CUDA of several GB. The host driver (libcuda) is mounted by the toolkit,
# as the NVIDIA_* variables below ask. Same Python and OS as the API image: one dependency resolution.
FROM python:3.11-slim

# The torch version BNRank is tested with; the default index (PyPI) serves its CUDA build. Another CUDA
# version: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 (or cu128, ...).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple

LABEL org.opencontainers.image.title="bnrank-worker" \
      org.opencontainers.image.description="BNRank Celery worker, CUDA" \
      org.opencontainers.image.licenses="Apache-2.0"

# Paths are those of docker-compose.yml's volumes; BNRANK_* variables given at run time override them.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    BNRANK_HOME=/var/lib/bnrank \
    BNRANK_BLOB_DIR=/var/lib/bnrank/blobs \
    BNRANK_CACHE_DIR=/var/lib/bnrank/cache \
    BNRANK_DATA_ROOTS=/data \
    BNRANK_DEVICE=cuda

# The same user (uid 10001) as the API image: the blob store and the cache are volumes shared by the API and
# the workers. The folders exist here so that a new named volume takes their owner.
RUN useradd --system --uid 10001 --user-group --no-create-home --home-dir /var/lib/bnrank bnrank \
    && mkdir -p /var/lib/bnrank/blobs /var/lib/bnrank/cache /data \
    && chown -R bnrank:bnrank /var/lib/bnrank \
    && python -m venv "$VIRTUAL_ENV"

# bubblewrap: the box BNRANK_SANDBOX=bwrap converts TorchScript archives of unknown architectures in
# (bnrank/engine/sandbox.py). Installed in every image, used only where the setting is on; the container then
# also needs the namespaces bubblewrap makes (docker/compose.sandbox.yml, docs/deploy.md). Not pinned: the
# version is the base image's Debian release's, which the base image tag already fixes.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends bubblewrap \
    && rm -rf /var/lib/apt/lists/* \
    && bwrap --version

# 1. torch alone, the largest layer and the one that changes least.
RUN pip install "torch==${TORCH_VERSION}" --index-url "$TORCH_INDEX_URL" \
    && python -c "import torch; assert torch.version.cuda, 'expected a CUDA build of torch'"

WORKDIR /app

# 2. the other dependencies, read from pyproject.toml alone, so that editing the source reuses this layer.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# 3. the source. Installed editable on purpose: service/core/db.py finds alembic.ini and alembic/ next to the
# service package, which a plain `pip install .` would move into site-packages without them.
COPY README.md alembic.ini ./
COPY alembic/ alembic/
COPY bnrank/ bnrank/
COPY service/ service/
COPY worker/ worker/
RUN pip install --no-deps -e . \
    && python -c "import service.core.db as d; assert d.ALEMBIC_INI.is_file() and d.ALEMBIC_DIR.is_dir()"
COPY --chmod=755 docker/entrypoint-api.sh docker/entrypoint-migrate.sh docker/entrypoint-worker.sh docker/

USER 10001:10001
ENTRYPOINT ["/app/docker/entrypoint-worker.sh"]
