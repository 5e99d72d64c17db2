# syntax=docker/dockerfile:1
#
# The GPU image by default. torch's CUDA wheels carry their own CUDA runtime, so the base is
# plain slim Python and the host needs only the NVIDIA driver and the container toolkit.
# CPU image: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# (docker-compose.cpu.yml does this).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# The torch release the test suite runs on (the README's test command installs its CPU build).
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://pypi.org/simple
# A directory of extra wheels that pip may take packages from, mounted into the build (for
# example `podman build -v /opt/wheels:/wheels:ro --build-arg WHEELS_DIR=/wheels`). CI builds
# with the machine's local CPU torch wheel this way. Empty: the indexes only.
ARG WHEELS_DIR=
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
WORKDIR /src
# Every other distribution is pinned exactly, so that a rebuild next month is the same image.
COPY constraints.txt ./
# torch first and on its own layer: it is most of the image and changes least often.
RUN pip install --constraint constraints.txt --index-url "${TORCH_INDEX_URL}" \
    ${WHEELS_DIR:+--find-links "$WHEELS_DIR"} "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --constraint constraints.txt .

FROM ${PYTHON_IMAGE} AS runtime
# torch.compile needs a C compiler when it runs, not only when the image is built: inductor
# compiles its CPU kernels and Triton its GPU kernels' launchers with it, against the Python
# headers (which python:*-slim keeps). Without one a compiled start dies ("No working C++
# compiler found" on the CPU, "Failed to find C compiler" on a GPU). gcc, g++ and the C library's
# headers, nothing recommended beside them: about 200 MB (docs/deployment.md).
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc g++ libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 reranker \
    && useradd --system --uid 10001 --gid reranker --create-home --home-dir /home/reranker reranker \
    && mkdir -p /cache /compile-cache /models \
    && chown reranker:reranker /cache /compile-cache /models
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/cache/huggingface \
    XDG_CACHE_HOME=/cache/xdg \
    RERANKER_COMPILE_CACHE=/compile-cache \
    RERANKER_HOST=0.0.0.0 \
    RERANKER_PORT=8000 \
    RERANKER_SHUTDOWN_GRACE_SECONDS=30
USER reranker
WORKDIR /home/reranker
# The model is downloaded once into /cache and reused by later containers; the GPU runner's
# compiled kernels (inductor's and Triton's caches) go to /compile-cache, so that a restart
# does not compile again. Nothing else is written outside /tmp, so the root filesystem can be
# read-only (compose runs it so).
VOLUME ["/cache", "/compile-cache"]
EXPOSE 8000
# SIGTERM starts a drain: /ready answers 503, in-flight requests finish (up to
# RERANKER_SHUTDOWN_GRACE_SECONDS), then exit 0. Give `docker stop -t` / compose's
# stop_grace_period more than that grace.
STOPSIGNAL SIGTERM
# Liveness only; the first start downloads the model (minutes) before the port opens.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10m --retries=3 \
    CMD ["reranker-healthcheck"]
ENTRYPOINT ["reranker-service"]
