# syntax=docker/dockerfile:1.7
# AutoGLM Mesh images, one target per app (docker-bake.json builds them all):
#   gateway, archiver, inference-cpu (linux/amd64 + linux/arm64), inference-cuda.
# Build stages hold pip and the package build; final stages hold only the virtual
# environment, run as an unprivileged user and carry a HEALTHCHECK matching the
# Kubernetes probes of k8s/base/apps/.

ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# ---- dependencies -----------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS venv-base
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY requirements.lock pyproject.toml README.md ./
COPY services ./services

# torch's CUDA wheel brings its own CUDA user-space libraries (the nvidia-* pins of
# requirements.lock); only the driver comes from the node, mounted by the NVIDIA
# container runtime. A CUDA base image would ship a second, possibly different copy.
FROM venv-base AS venv-cuda
RUN pip install -r requirements.lock \
 && pip install --no-deps . \
 && pip uninstall -y pip setuptools

# CPU torch (PyTorch's CPU index, amd64 and arm64): the lock minus CUDA libraries.
FROM venv-base AS venv-cpu
RUN grep -vE '^(nvidia-|cuda-|triton==)' requirements.lock > /tmp/requirements-cpu.txt \
 && pip install --index-url https://download.pytorch.org/whl/cpu \
      "torch==$(sed -n 's/^torch==//p' requirements.lock)" \
 && pip install -r /tmp/requirements-cpu.txt \
 && pip install --no-deps . \
 && pip uninstall -y pip setuptools

# ---- runtime ----------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
# Same uid/gid as the pods' securityContext (runAsUser 10001).
RUN groupadd --system --gid 10001 autoglm \
 && useradd --system --uid 10001 --gid autoglm --home-dir /home/autoglm --create-home autoglm \
 && rm -rf /var/lib/apt/lists/*
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HOME=/home/autoglm
WORKDIR /home/autoglm

FROM runtime AS gateway
COPY --from=venv-cpu /opt/venv /opt/venv
USER 10001:10001
ENV AUTOGLM_GATEWAY_HOST=0.0.0.0 AUTOGLM_GATEWAY_PORT=8080
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["python", "-m", "autoglm.gateway"]

FROM runtime AS archiver
COPY --from=venv-cpu /opt/venv /opt/venv
USER 10001:10001
ENV AUTOGLM_ARCHIVER_HOST=0.0.0.0 AUTOGLM_ARCHIVER_PORT=50052 \
    AUTOGLM_ARCHIVER_ROOT=/var/lib/autoglm/archive
EXPOSE 50052
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=4 \
  CMD ["python", "-c", "import socket; socket.create_connection(('127.0.0.1', 50052), 2).close()"]
ENTRYPOINT ["python", "-m", "autoglm.archiver"]

FROM runtime AS inference-base
ENV AUTOGLM_INFERENCE_HOST=0.0.0.0 AUTOGLM_INFERENCE_PORT=50051 \
    AUTOGLM_INFERENCE_METRICS_PORT=9464 HF_HUB_OFFLINE=1 HF_HOME=/tmp/hf
EXPOSE 50051 9464
# Model loading takes minutes: a long start period, as the startupProbe allows.
HEALTHCHECK --interval=15s --timeout=3s --start-period=900s --retries=4 \
  CMD ["python", "-c", "import socket; socket.create_connection(('127.0.0.1', 50051), 2).close()"]
ENTRYPOINT ["python", "-m", "autoglm.inference"]

FROM inference-base AS inference-cpu
COPY --from=venv-cpu /opt/venv /opt/venv
USER 10001:10001

FROM inference-base AS inference-cuda
COPY --from=venv-cuda /opt/venv /opt/venv
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
