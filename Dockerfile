# syntax=docker/dockerfile:1.7
# csm-service on a CUDA GPU: `docker build -t csm-service .`
# Bake the gated weights into the image (optional; otherwise they load from the mounted HF cache):
#   docker build --secret id=hf_token,env=HF_TOKEN -t csm-service .
# The token is a build secret, not a build argument, so it never lands in the image or its history.

ARG CUDA_RUNTIME=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

# --- build: a virtual environment with CUDA torch, moshi (Mimi) and csm-service --------------------
FROM ${CUDA_RUNTIME} AS build
ARG TORCH_VERSION=2.11.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG MOSHI_VERSION=0.2.13
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# The distribution's Python (3.12 on Ubuntu 24.04) follows the pinned base image's updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/venv/bin:$PATH
# moshi pins torch<2.10 and more; only its Mimi code is used, so it is installed without deps and
# the packages it really uses come with csm-service's [engine] extra.
RUN python3 -m venv /opt/venv \
    && pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}" \
    && pip install --no-deps "moshi==${MOSHI_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos ./protos
COPY csm_service ./csm_service
COPY runpod ./runpod
# The package itself (versions bounded in pyproject.toml) and the RunPod SDK, pinned.
# hadolint ignore=DL3013
RUN pip install ".[engine]" "runpod==1.12.0"

# --- weights: baked only when the hf_token secret is given ----------------------------------------
FROM build AS weights
ARG MODEL=sesame/csm-1b
ENV HF_HOME=/opt/hf
RUN --mount=type=secret,id=hf_token,required=false \
    mkdir -p /opt/hf \
    && if [ -s /run/secrets/hf_token ]; then \
         HF_TOKEN="$(cat /run/secrets/hf_token)" python -m csm_service.cli fetch --model "${MODEL}"; \
       else echo "no hf_token secret: weights are not baked in"; fi

# --- runtime -------------------------------------------------------------------------------------
FROM ${CUDA_RUNTIME} AS runtime
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 csm
COPY --from=build /opt/venv /opt/venv
COPY --from=build /src/runpod /opt/csm/runpod
COPY --from=weights --chown=csm:csm /opt/hf /home/csm/.cache/huggingface
# No compiler here, so no torch.compile: moshi's lazy compile of Mimi's small functions would need
# gcc and Python headers at run time (Inductor/Triton). Its CUDA graphs still run; the codec turns
# the compile off in code as well (docs/deploy.md, "The image").
ENV PATH=/opt/venv/bin:$PATH \
    NO_TORCH_COMPILE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/home/csm/.cache/huggingface \
    CSM_DATA_DIR=/data \
    CSM_HOST=0.0.0.0 \
    CSM_PORT=8000 \
    CSM_GRPC_PORT=50051
RUN mkdir -p /data && chown csm:csm /data
USER 10001
WORKDIR /home/csm
# Model cache and voice data survive container restarts when mounted.
VOLUME ["/home/csm/.cache/huggingface", "/data"]
EXPOSE 8000 50051
# Loading and warming CSM-1B takes a while on a cold cache: a long start period.
HEALTHCHECK --interval=15s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python3", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4).status != 200)"]
CMD ["csm-service", "serve"]
