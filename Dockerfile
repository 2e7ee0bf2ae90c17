# syntax=docker/dockerfile:1.7
# csm-service on a CUDA GPU: `docker build -t csm-service .`
# Bake the gated weights into the image (optional; otherwise they load from a mounted HF cache):
#   docker build --secret id=hf_token,env=HF_TOKEN -t csm-service .
# The token is a build secret, not a build argument, so it never lands in the image or its history.
#
# CUDA comes with the torch wheel (its nvidia-* packages: runtime, cuBLAS, cuDNN, NCCL...); the
# driver comes from the host through the NVIDIA container toolkit. So the base is plain Python: an
# nvidia/cuda base would ship a second copy of the CUDA libraries that nothing loads.
# Layers from the least to the most often changed: Python, torch, moshi, the dependencies that
# pyproject.toml names, (weights), the package itself; a source change rebuilds only the last.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# --- deps: a venv with CUDA torch, moshi (Mimi) and csm-service's dependencies, no source --------
FROM ${PYTHON_IMAGE} AS deps
ARG TORCH_VERSION=2.11.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG MOSHI_VERSION=0.2.13
ENV PATH=/opt/venv/bin:$PATH PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/venv \
    && pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
# moshi pins torch<2.10 and more; only its Mimi code is used, so it is installed without deps and
# the packages it really uses come with csm-service's [engine] extra. Its own layer: a moshi bump
# must not rebuild the torch layer (GBs).
# hadolint ignore=DL3059
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps "moshi==${MOSHI_VERSION}"
# The dependencies (core and [engine]) as pyproject.toml bounds them, read from that file alone, and
# the RunPod SDK, pinned. torch is already there and satisfies [engine]'s bound.
COPY pyproject.toml /tmp/pyproject.toml
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c "import tomllib; p = tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['engine']))" > /tmp/requirements.txt \
    && pip install --requirement /tmp/requirements.txt "runpod==1.12.0"

# --- wheel: the package itself, built from the source -------------------------------------------
FROM deps AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY csm_service ./csm_service
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --no-deps --wheel-dir /wheels .

# --- weights: baked only when the hf_token secret is given ----------------------------------------
# Downloads go to a build cache (one per MODEL), so a source change re-runs `fetch` without
# downloading again; the cache is copied out with its timestamps, so the runtime's weights layer
# comes out the same and is not pushed again.
FROM wheel AS weights
ARG MODEL=sesame/csm-1b
RUN --mount=type=secret,id=hf_token,required=false \
    --mount=type=cache,target=/hf-cache,id=csm-hf-${MODEL} \
    mkdir -p /opt/hf \
    && if [ -s /run/secrets/hf_token ]; then \
         HF_HOME=/hf-cache HF_TOKEN="$(cat /run/secrets/hf_token)" python -m csm_service.cli fetch --model "${MODEL}" \
         && cp -a /hf-cache/hub /opt/hf/; \
       else echo "no hf_token secret: weights are not baked in"; fi

# --- runtime -------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
RUN useradd --create-home --uid 10001 csm && mkdir -p /data && chown csm:csm /data
COPY --from=deps /opt/venv /opt/venv
COPY --from=weights --chown=csm:csm /opt/hf /home/csm/.cache/huggingface
# No compiler here, so no torch.compile: moshi's lazy compile of Mimi's small functions would need
# gcc and Python headers at run time (Inductor/Triton). Its CUDA graphs still run; the codec turns
# the compile off in code as well (docs/deploy.md, "The image").
# Writable at run time: /data (voice profiles) and /tmp; the rest may be mounted read-only.
ENV PATH=/opt/venv/bin:$PATH \
    NO_TORCH_COMPILE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/home/csm/.cache/huggingface \
    CSM_DATA_DIR=/data \
    CSM_HOST=0.0.0.0 \
    CSM_PORT=8000 \
    CSM_GRPC_PORT=50051 \
    CSM_METRICS_PORT=9100
# HTTP/WebSocket edge, gRPC, and the engine worker's Prometheus port (`serve` has /metrics on 8000).
EXPOSE 8000 50051 9100
# Loading and warming CSM-1B takes a while on a cold cache: a long start period. The check follows
# the container's command and its port: /health for serve and edge, gRPC health for `engine`.
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-m", "csm_service.healthcheck"]
COPY runpod /opt/csm/runpod
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    pip install --no-deps --no-cache-dir /wheels/csm_service-*.whl
USER 10001
WORKDIR /home/csm
CMD ["csm-service", "serve"]
