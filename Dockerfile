# The service image: `docker run IMAGE serve` (endpoint; also what SageMaker runs) or
# `docker run IMAGE worker` (batch worker). `docker build .` builds it (the last stage);
# `docker build --target localcloud .` builds the local cloud for compose/docker-compose.yml.
#
# BASE_IMAGE exists for machines without a reachable registry or behind a TLS proxy: the
# container tests build FROM a local image that carries pip's CA bundle (see
# .ci/docker_engine.sh). Ordinary builds leave it alone.
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS base
# A virtual environment makes `python` and `pip` the same on every Debian-based image,
# whether its interpreter is /usr/local/bin/python or Debian's python3 without pip.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

FROM base AS deps
# requirements-model.txt: the packages served models need beyond scikit-learn (LightGBM, ...).
COPY requirements.txt requirements-model.txt constraints.txt /tmp/deps/
RUN python3 -m venv "$VIRTUAL_ENV" \
    && pip install -r /tmp/deps/requirements.txt -r /tmp/deps/requirements-model.txt \
        -c /tmp/deps/constraints.txt

FROM base AS service
# libgomp1: the OpenMP runtime LightGBM's wheel links against (absent from slim images).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /app app
COPY --from=deps /opt/venv /opt/venv
WORKDIR /app
COPY service/ service/
USER app
ENV HOST=0.0.0.0 \
    PORT=8080
EXPOSE 8080
LABEL com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true
# /ping is 200 only while a model is loaded. A worker container serves no HTTP, so the
# check passes for it (ECS and SageMaker use their own checks and ignore this one).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; 'worker' in open('/proc/1/cmdline').read().split(chr(0)) or u.urlopen('http://127.0.0.1:%s/ping' % os.environ.get('PORT', '8080'), timeout=4)"]
ENTRYPOINT ["python", "-m", "service"]
CMD ["serve"]

# The local cloud (moto + Lambda runtime + ECS agent) running the same code in one container.
FROM service AS localcloud
USER root
COPY requirements.txt requirements-model.txt requirements-local.txt constraints.txt /tmp/deps/
RUN pip install -r /tmp/deps/requirements-local.txt -c /tmp/deps/constraints.txt \
    && mkdir -p /app/.localcloud && chown app:app /app/.localcloud
COPY localcloud/ localcloud/
COPY infra/ infra/
COPY lambda/ lambda/
COPY scripts/ scripts/
USER app
# Published ports reach a container on its external interface, so the local cloud listens
# on every interface here; compose publishes them on the host's 127.0.0.1 only.
ENV LOCALCLOUD_BIND=0.0.0.0
EXPOSE 4566 8080
ENTRYPOINT ["python", "-m", "localcloud"]
CMD ["up"]

# The default target: the service image, without the local cloud or the tests.
FROM service AS runtime
